"""Ship a trained student as the bundled ``lganna-mini``: fp16 safetensors plus provenance.

    python -m lganna_rag.training.bundle runs/lganna-mini/best                  # copy in, fp16
    python -m lganna_rag.training.bundle --scores benchmarks/results/lganna-mini.json   # record benchmark scores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from lganna_rag.models import bundled_weights_dir, read_model_config

from .model import save_student


def bundle(src: Path, dst: Path | None = None) -> Path:
    """Re-save the model directory ``src`` in fp16 under the package's bundled weights (``dst``)."""
    from lganna_rag.encoder import LGAnnaEncoder

    dst = dst or bundled_weights_dir() / "lganna-mini"
    encoder = LGAnnaEncoder.from_pretrained(str(src), device="cpu")
    provenance = {**encoder.config.provenance, "bundled_from": str(src), "dtype": "float16",
                  "reproduce": "lganna-rag train training/configs/lganna-mini.yaml"}
    summary = src.parent / "summary.json"
    if summary.is_file():  # the whole run: steps, wall time, dev history (the bundled step is provenance["best"])
        run = json.loads(summary.read_text())
        provenance["training_run"] = {k: run.get(k) for k in ("steps", "wall_minutes", "final_loss", "history")}
    save_student(encoder.model, encoder.tokenizer, dst, encoder.config.pooling, encoder.config.max_length,
                 provenance, dtype=torch.float16, prompt_template=encoder.config.prompt_template)
    return dst


def record_scores(results: Path, dst: Path | None = None) -> dict[str, Any]:
    """Copy the main score per task and the means per task type of ``results`` (``bench quality`` JSON) into ``lganna.json``."""
    from lganna_rag.benchmarks.report import type_averages

    dst = dst or bundled_weights_dir() / "lganna-mini"
    result = json.loads(results.read_text())
    tasks = result["tasks"]
    summary = {
        "source": str(results),
        "mean": round(sum(t["main_score"] for t in tasks.values()) / len(tasks), 2),
        "by_type": dict(sorted(type_averages(result).items())),
        "tasks": {name: t["main_score"] for name, t in tasks.items()},
    }
    config = read_model_config(dst, is_decoder=True)
    config.provenance["benchmark"] = summary
    config.save(dst)
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line for :func:`bundle` and :func:`record_scores`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", help="trained model directory (e.g. runs/lganna-mini/best)")
    parser.add_argument("--dest", help="target directory (default: the package's weights/lganna-mini)")
    parser.add_argument("--scores", help="a bench quality result JSON to record in lganna.json")
    args = parser.parse_args(argv)
    dst = Path(args.dest) if args.dest else None
    if args.source:
        print(f"bundled {bundle(Path(args.source), dst)}")
    if args.scores:
        print(json.dumps(record_scores(Path(args.scores), dst), indent=2)[:2000])


if __name__ == "__main__":
    main()
