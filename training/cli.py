"""``lganna-rag train CONFIG`` (imported only when used)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click


def resolve_config(path: str) -> Path:
    """``path`` as given, else a bundled config (``configs/NAME.yaml``)."""
    p = Path(path)
    if p.is_file():
        return p
    configs = Path(__file__).resolve().parent / "configs"
    for candidate in (configs / p.name, configs / f"{p.name}.yaml"):
        if candidate.is_file():
            return candidate
    names = ", ".join(sorted(c.stem for c in configs.glob("*.yaml")))
    raise click.BadParameter(f"no config file {path!r} (bundled configs: {names})")


@click.command("train")
@click.argument("config")
@click.option("--output-dir", default=None, help="Override output_dir (checkpoints; the export goes to OUTPUT_DIR/final).")
@click.option("--max-steps", type=int, default=None, help="Override the number of optimiser steps.")
@click.option("--stop-after", type=int, default=None, help="Stop at this step (checkpoint + export; the schedule keeps its length); rerun to resume.")
@click.option("--no-resume", is_flag=True, help="Start over even if output_dir has a checkpoint.")
def train(config: str, output_dir: str | None, max_steps: int | None, stop_after: int | None, no_resume: bool) -> None:
    """Train an LG-ANNA embedder from a YAML config (sentence-transformers Trainer; resumes from output_dir).

    \b
    Examples:
      lganna-rag train lganna-minilm
      lganna-rag train my-config.yaml --max-steps 200 --output-dir runs/trial
      torchrun --nproc_per_node 2 -m lganna_rag.training.cli my-config.yaml
    Your own data: in the config, sources: [{path: pairs.jsonl, task: retrieval}] (rows: query, positive,
    optional negatives).
    """
    from .trainer import load_config, train as run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_config(resolve_config(config), output_dir=output_dir)
    result = run(cfg, resume=not no_resume, max_steps=max_steps, stop_after=stop_after)
    if result.export_dir is not None:
        keep = ("name", "steps", "dev_start", "dev_end", "wall_time_s", "device", "world_size")
        click.echo(json.dumps({"export_dir": str(result.export_dir), **{k: result.summary[k] for k in keep}}, indent=2))


if __name__ == "__main__":  # torchrun / accelerate launch -m lganna_rag.training.cli CONFIG
    train()
