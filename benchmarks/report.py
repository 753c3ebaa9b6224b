"""Markdown tables and PNG plots from ``benchmarks/results/*.json``."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean
from typing import Any

from lganna_rag.prompts import TASK_TYPES

from .quality import PUBLISHED_MINILM, RESULTS_DIR
from .tasks import SHARED_TASKS

#: Column order for models we know; others follow alphabetically.
_ORDER = ["lganna-minilm", "lganna-mini", "minilm", "wordllama", "bm25", "hybrid"]


def load_quality_results(out_dir: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    """Full test-split quality results by model label (not ``--quick`` slices, not ``--dev`` selection runs)."""
    results = {}
    for path in sorted(out_dir.glob("*.json")):
        if path.name.endswith((".quick.json", ".dev.json")):
            continue
        data = json.loads(path.read_text())
        if (isinstance(data, dict) and "tasks" in data and not data.get("quick") and not data.get("dev")
                and _is_quality(data)):
            results[path.stem] = data
    return dict(sorted(results.items(), key=lambda kv: (_ORDER.index(kv[0]) if kv[0] in _ORDER else 99, kv[0])))


def _is_quality(data: dict[str, Any]) -> bool:
    """A ``bench quality`` result (other benchmarks, e.g. ``adapt.json``, also have a ``tasks`` key)."""
    tasks = data["tasks"]
    return isinstance(tasks, dict) and all(isinstance(v, dict) and "type" in v and "main_score" in v for v in tasks.values())


def type_averages(result: dict[str, Any]) -> dict[str, float]:
    """Mean main score per task type (only types the model ran)."""
    by_type: dict[str, list[float]] = {}
    for entry in result["tasks"].values():
        by_type.setdefault(entry["type"], []).append(entry["main_score"])
    return {t: round(mean(v), 2) for t, v in by_type.items()}


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def leaderboard_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Tasks x models table with averages per task type and overall; plus the MiniLM harness validation."""
    models = list(results)
    lines = ["| task | type | metric | " + " | ".join(models) + " |", "|---|---|---|" + "---:|" * len(models)]
    for task in SHARED_TASKS:
        entries = [results[m]["tasks"].get(task.folder) for m in models]
        if not any(entries):
            continue
        metric = next(e["main_metric"] for e in entries if e)
        best = max((e["main_score"] for e in entries if e), default=None)
        cells = ["—" if e is None else (f"**{e['main_score']:.2f}**" if e["main_score"] == best else f"{e['main_score']:.2f}") for e in entries]
        lines.append(f"| {task.name} | {task.task_type} | {metric} | " + " | ".join(cells) + " |")
    avgs = {m: type_averages(results[m]) for m in models}
    for t in TASK_TYPES:
        if any(t in a for a in avgs.values()):
            lines.append(f"| **mean {t}** | | | " + " | ".join(_fmt(avgs[m].get(t)) for m in models) + " |")
    n_all = len(SHARED_TASKS)
    overall = []
    for m in models:
        scores = [e["main_score"] for e in results[m]["tasks"].values()]
        overall.append(_fmt(mean(scores)) if len(scores) == n_all else f"({len(scores)} tasks)")
    lines.append(f"| **mean, all {n_all} tasks** | | | " + " | ".join(overall) + " |")
    means_of_types = [_fmt(mean(avgs[m].values())) if len(avgs[m]) >= 6 else "—" for m in models]
    lines.append("| **mean of type means** | | | " + " | ".join(means_of_types) + " |")
    return "\n".join(lines)


def validation_markdown(minilm: dict[str, Any]) -> str:
    """Our MiniLM scores next to the published MTEB values."""
    lines = ["| MTEB task | ours | published | difference |", "|---|---:|---:|---:|"]
    for entry_name, entry in minilm["tasks"].items():
        name = entry.get("mteb_name") or entry_name
        if name in PUBLISHED_MINILM:
            diff = entry["main_score"] - PUBLISHED_MINILM[name]
            lines.append(f"| {name} | {entry['main_score']:.2f} | {PUBLISHED_MINILM[name]:.2f} | {diff:+.2f} |")
    missing = sorted(set(PUBLISHED_MINILM) - {e.get("mteb_name") or n for n, e in minilm["tasks"].items()})
    if missing:
        lines.append(f"\nNot in the shared data (no local copy): {', '.join(missing)}.")
    return "\n".join(lines)


def speed_markdown(speed: dict[str, Any]) -> str:
    """Encoder and vector-store tables from ``speed.json``."""
    lines = [
        f"Machine ceiling: {speed['matmul_gflops']:.1f} GFLOP/s (float32 matmul, torch threads: {speed['cpu_threads']}). "
        f"{speed['texts']} real texts (STSBenchmark sentences + SciFact abstracts).",
        "",
        "| model | texts/s | tokens/s | texts/s vs MiniLM | tokens/s vs MiniLM | time to first embedding (s) | peak RSS (MB) | achieved GFLOP/s | fraction of ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in speed["encoders"].values():
        lines.append(
            f"| {r['model']} | {r['texts_per_s']:.0f} | {r['tokens_per_s']:.0f} | {r['texts_per_s_ratio_to_minilm']:.2f} | "
            f"{r['tokens_per_s_ratio_to_minilm']:.2f} | {r['time_to_first_embedding_s']:.2f} | {r['peak_rss_mb']:.0f} | "
            f"{r['achieved_gflops']:.2f} | {r['fraction_of_ceiling']:.3f} |"
        )
    if not speed["vector_stores"]:
        lines += ["", "No vector-store timings in this run (`lganna-rag bench speed` with `--sizes` measures them)."]
        return "\n".join(lines)
    lines += ["", "| store | vectors | upsert (s) | query p50 (ms) | query p99 (ms) | recall@10 |", "|---|---:|---:|---:|---:|---:|"]
    earlier = []
    for r in speed["vector_stores"]:
        mark = ""
        if "measured_in" in r:  # a row kept from an earlier run (an encoders-only run does not re-time stores)
            if r["measured_in"] not in earlier:
                earlier.append(r["measured_in"])
            mark = " " + "*" * (earlier.index(r["measured_in"]) + 1)
        if "skipped" in r:
            lines.append(f"| {r['store']}{mark} | {r['vectors']:,} | — | — | — | {r['skipped']} |")
        else:
            lines.append(f"| {r['store']}{mark} | {r['vectors']:,} | {r['upsert_s']:.2f} | {r['query_p50_ms']:.2f} | "
                         f"{r['query_p99_ms']:.2f} | {r['recall_at_10']:.3f} |")
    for i, run in enumerate(earlier, 1):
        versions = ", ".join(f"{k} {v}" for k, v in (run.get("versions") or {}).items())
        lines.append(f"\n{'*' * i} measured in an earlier run ({run.get('cpu_threads')} threads; {versions}).")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], speed: dict[str, Any] | None, out_dir: Path) -> list[Path]:
    """``quality_by_type.png`` (mean score per task type per model) and ``quality_vs_speed.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    models = list(results)
    types = [t for t in TASK_TYPES if any(t in type_averages(r) for r in results.values())]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        avg = type_averages(results[m])
        ax.bar(np.arange(len(types)) + i * width, [avg.get(t, 0) for t in types], width, label=m)
    ax.set_xticks(np.arange(len(types)) + width * (len(models) - 1) / 2, [t.replace("_", "\n") for t in types])
    ax.set_ylabel("mean main score")
    ax.set_title("Quality per task type (shared MTEB-style tasks)")
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "quality_by_type.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    if speed:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for m, r in speed["encoders"].items():
            if m in results and len(type_averages(results[m])) >= 6:
                q = mean(type_averages(results[m]).values())
                ax.scatter(r["texts_per_s"], q, s=60)
                ax.annotate(m, (r["texts_per_s"], q), textcoords="offset points", xytext=(6, 4))
        ax.set_xscale("log")
        threads = speed["cpu_threads"]
        ax.set_xlabel(f"encode throughput (texts/s, {threads} CPU thread{'s' if threads != 1 else ''}, log scale)")
        ax.set_ylabel("mean of task-type means")
        ax.set_title("Quality vs speed")
        fig.tight_layout()
        paths.append(out_dir / "quality_vs_speed.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


#: The precision quality rule (README, Speed): at most this mean loss over the STS, retrieval and reranking tasks
#: run at both precisions, and no task worse by more than ``MAX_TASK_LOSS``.
MAX_MEAN_LOSS, MAX_TASK_LOSS = 0.3, 1.0
#: The precisions the rule is applied to (``NAME@PRECISION`` result files against ``NAME``'s fp32 one).
RULED_PRECISIONS = ("int8-onnx", "bf16-openvino", "bf16")


def precision_rule_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Each ``NAME-at-PRECISION`` result against ``NAME`` (fp32) on their common STS/retrieval/reranking tasks:
    the mean loss, the worst task and whether the rule passes, then the per-task differences."""
    rows = ["| model | precision | tasks | fp32 mean | mean at the precision | mean loss | worst task | passes |",
            "|---|---|---:|---:|---:|---:|---|---|"]
    detail = []
    for label, q in results.items():
        precision = next((p for p in RULED_PRECISIONS if label.endswith(f"-at-{p}")), None)
        base = results.get(label.removesuffix(f"-at-{precision}")) if precision else None
        if base is None:
            continue
        tasks = [t for t, e in q["tasks"].items() if t in base["tasks"] and e["type"] in ("sts", "retrieval", "reranking")]
        if not tasks:
            continue
        diff = {t: round(q["tasks"][t]["main_score"] - base["tasks"][t]["main_score"], 2) for t in tasks}
        f32, i8 = (mean(r["tasks"][t]["main_score"] for t in tasks) for r in (base, q))
        worst = min(diff, key=diff.get)
        ok = f32 - i8 <= MAX_MEAN_LOSS and diff[worst] >= -MAX_TASK_LOSS
        rows.append(f"| {base['model']} | {precision} | {len(tasks)} | {f32:.2f} | {i8:.2f} | {f32 - i8:+.2f} "
                    f"| {worst} {diff[worst]:+.2f} | {'yes' if ok else 'no'} |")
        detail.append(f"- {base['model']} at {precision}: " + ", ".join(f"{t} {d:+.2f}" for t, d in diff.items()))
    return "\n".join(rows + [""] + detail) if detail else ""


def write_report(out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``leaderboard.md`` (+ PNGs) from the result files; returns the Markdown path."""
    results = load_quality_results(out_dir)
    speed_path = out_dir / "speed.json"
    speed = json.loads(speed_path.read_text()) if speed_path.is_file() else None
    parts = ["# Benchmark results", "", "Generated by `lganna-rag bench report` from `benchmarks/results/*.json`.", ""]
    if results:
        parts += ["## Quality (mteb evaluators on the shared data)", "", leaderboard_markdown(results), ""]
        if "minilm" in results:
            parts += ["## Harness validation: all-MiniLM-L6-v2, ours vs published MTEB", "", validation_markdown(results["minilm"]), ""]
    rule = precision_rule_markdown(results)
    if rule:
        parts += ["## The precision quality rule (`precision=\"auto\"`)", "",
                  f"Mean loss at most {MAX_MEAN_LOSS} on the STS, retrieval and reranking tasks, no task worse by more "
                  f"than {MAX_TASK_LOSS}; fp32 = the model's own result file, the other column `NAME@PRECISION`.", "",
                  rule, ""]
    if speed:
        parts += ["## Speed", "", speed_markdown(speed), ""]
    if results:
        for p in plot(results, speed, out_dir):
            parts.append(f"![{p.stem}]({p.name})")
    path = out_dir / "leaderboard.md"
    path.write_text("\n".join(parts) + "\n")
    return path
