"""``lganna-rag train CONFIG`` (imported only when used)."""

from __future__ import annotations

import json
from pathlib import Path

import click


def resolve_config(path: str) -> Path:
    """``path`` as given, else relative to the installed ``training`` package (``configs/NAME.yaml``)."""
    p = Path(path)
    if p.is_file():
        return p
    bundled = Path(__file__).resolve().parent / p
    if bundled.is_file():
        return bundled
    bundled = Path(__file__).resolve().parent / "configs" / p.name
    if bundled.is_file():
        return bundled
    raise click.BadParameter(f"no config file {path!r} (bundled configs: lganna-mini.yaml, mistral-7b-lora.yaml)")


@click.command("train")
@click.argument("config")
@click.option("--output-dir", default=None, help="Override output_dir.")
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps (the schedule keeps its length).")
@click.option("--no-resume", is_flag=True, help="Start over even if output_dir has a checkpoint.")
def train(config: str, output_dir: str | None, max_steps: int | None, no_resume: bool) -> None:
    """Train an LG-ANNA embedder from a YAML config (checkpoints and exact resume in output_dir).

    \b
    Examples:
      lganna-rag train training/configs/lganna-mini.yaml
      lganna-rag train configs/lganna-mini.yaml --max-steps 200 --output-dir runs/trial
      torchrun --nproc_per_node 2 -m lganna_rag.training.trainer training/configs/lganna-mini.yaml
    """
    import logging

    from .trainer import load_config
    from .trainer import train as run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_config(resolve_config(config), output_dir=output_dir)
    summary = run(cfg, resume=not no_resume, max_steps=max_steps)
    click.echo(json.dumps({k: v for k, v in summary.items() if k not in ("losses", "history")}, indent=2))
