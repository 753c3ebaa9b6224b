"""Ablations of the LG-ANNA recipe: each component switched off in turn, same data and step budget.

Training-time variants (each a full, shorter run of :func:`~lganna_rag.training.trainer.train`),
relative to the shipped recipe (plain queries): hard labels only (no KL), no distillation, no mining /
fixed threshold / adaptive margin, instructions with and without ICL examples at training time.
Query-time variants (on the instruction-trained model): with and without few-shot examples, without
instructions. Scores are the trainer's dev metrics (STSBenchmark dev
Spearman, held-out retrieval MRR@10 of the training sources; never test data).

    python -m lganna_rag.training.ablations --steps 150      # writes benchmarks/results/ablations.{json,md}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable

from .trainer import TrainConfig, evaluate, load_config, prepare, sts_dev_pairs, train

VARIANTS: dict[str, tuple[str, Callable[[TrainConfig], TrainConfig]]] = {
    "full": ("shipped recipe (InfoNCE + KL + distillation + adaptive mining, plain queries)", lambda c: c),
    "no-kl": ("hard labels only (no KL term)", lambda c: dataclasses.replace(c, kl_weight=0.0)),
    "no-distill": ("no dense-teacher distillation term", lambda c: dataclasses.replace(c, distill_weight=0.0)),
    "mining-none": ("no mining filter (k hardest candidates)",
                    lambda c: dataclasses.replace(c, mining=dataclasses.replace(c.mining, mode="none"))),
    "mining-fixed": ("fixed threshold mining (teacher score < 0.7)",
                     lambda c: dataclasses.replace(c, mining=dataclasses.replace(c.mining, mode="fixed"))),
    "instructions": ("instructions + ICL examples at training time (the paper's prompts)",
                     lambda c: dataclasses.replace(c, use_instructions=True)),
    "instructions-no-icl": ("instructions, no ICL examples at training time",
                            lambda c: dataclasses.replace(c, use_instructions=True, icl_max_examples=0)),
}


def run_ablations(config: str | Path, steps: int, out_dir: Path, names: list[str] | None = None,
                  batch_size: int | None = None) -> dict[str, Any]:
    """Train every variant for ``steps`` steps (finished ones are read back from disk); returns all rows."""
    base = load_config(config)
    base = dataclasses.replace(base, steps=steps, batch_size=batch_size or base.batch_size, warmup_steps=min(base.warmup_steps, steps // 5),
                               eval_every=max(1, steps // 3), save_every=steps, time_budget_minutes=None)
    rows: dict[str, Any] = {}
    for name in names or list(VARIANTS):
        label, change = VARIANTS[name]
        cfg = change(dataclasses.replace(base, output_dir=str(out_dir / name)))
        summary_path = out_dir / name / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else train(cfg)
        final = summary["history"][-1]
        rows[name] = {"label": label, "steps": summary["steps"], "batch_size": cfg.batch_size, "wall_minutes": summary["wall_minutes"],
                      "start": summary["history"][0], "final": final, "final_loss": summary["final_loss"]}
    return rows


def query_time_rows(config: str | Path, model_dir: Path, shots: int = 2) -> dict[str, Any]:
    """An instruction-trained model evaluated with 0 and ``shots`` query-time examples, and without instructions."""
    from lganna_rag.encoder import LGAnnaEncoder

    cfg = load_config(config)
    prep = prepare(cfg)
    sts_dev = sts_dev_pairs(cfg)
    # at the training max_length, like the training rows (the exported model serves longer texts)
    encoder = LGAnnaEncoder.from_pretrained(str(model_dir), max_length=cfg.max_length)
    return {
        "instructions, 0 examples": evaluate(encoder, prep, sts_dev, True, 0),
        f"instructions, {shots} examples": evaluate(encoder, prep, sts_dev, True, shots),
        "no instructions": evaluate(encoder, prep, sts_dev, False, 0),
    }


def write_report(rows: dict[str, Any], query_rows: dict[str, dict[str, Any]], path: Path) -> None:
    """Write ``ablations.json`` and a Markdown table ``ablations.md`` next to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps({"training": rows, "query_time": query_rows}, indent=2))
    full = rows.get("full", {}).get("final", {}).get("dev_score")
    lines = ["# Ablations of the LG-ANNA recipe (lganna-mini student, dev metrics)", "",
             "| variant | steps | STSB dev Spearman | retrieval dev MRR@10 | dev score | vs full | untrained start | final loss |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        f = r["final"]
        delta = "" if full is None or name == "full" else f"{f['dev_score'] - full:+.2f}"
        lines.append(f"| {r['label']} | {r['steps']} | {f['sts_dev_spearman']:.2f} | {f['retrieval_dev_mrr10']:.2f} "
                     f"| {f['dev_score']:.2f} | {delta} | {r['start']['dev_score']:.2f} | {r['final_loss']} |")
    if query_rows:
        lines += ["", "Query-time variants (the instruction-trained model, different query rendering; same max_length):", "",
                  "| query rendering | STSB dev Spearman | retrieval dev MRR@10 | dev score |", "|---|---:|---:|---:|"]
        for label, m in query_rows.items():
            lines.append(f"| {label} | {m['sts_dev_spearman']:.2f} | {m['retrieval_dev_mrr10']:.2f} | {m['dev_score']:.2f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Command line: run the ablations and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(Path(__file__).parent / "configs" / "lganna-mini.yaml"))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, help="override the config's batch size")
    parser.add_argument("--out-dir", default="runs/ablations")
    parser.add_argument("--only", help="comma-separated variant names: " + ",".join(VARIANTS))
    parser.add_argument("--query-model", help="model directory for the query-time rows (default: the instructions variant's best)")
    parser.add_argument("--report", default="benchmarks/results/ablations.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out = Path(args.out_dir)
    rows = run_ablations(args.config, args.steps, out, args.only.split(",") if args.only else None, args.batch_size)
    model = Path(args.query_model) if args.query_model else out / "instructions" / "best"
    query_rows = query_time_rows(args.config, model) if model.is_dir() else {}
    write_report(rows, query_rows, Path(args.report))
    print(Path(args.report).read_text())


if __name__ == "__main__":
    main()
