"""``lganna-rag bench ...``: benchmark commands (imported only when used)."""

from __future__ import annotations

import json

import click


@click.group()
def bench() -> None:
    """Benchmarks on the shared task data ($LGANNA_DATA)."""


@bench.command("parity")
@click.option("--n", "n", default=1000, show_default=True, help="Number of real sentences.")
@click.option("--repeats", default=3, show_default=True)
def parity_cmd(n: int, repeats: int) -> None:
    """MiniLM through LGAnnaEncoder vs SentenceTransformer: vector parity and throughput ratio."""
    from .parity import run

    click.echo(json.dumps(run(n, repeats), indent=2))
