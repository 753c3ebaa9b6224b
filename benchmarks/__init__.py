"""Benchmarks on local MTEB task data: quality and speed suites with baselines."""
