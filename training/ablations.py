"""Ablations of the LG-ANNA recipe, one part changed at a time, scored on the trainer's dev metrics (never test data).

Training-time variants are shorter runs on the same data and steps; query-time variants evaluate one trained
model with and without instructions.

    python -m lganna_rag.training.ablations --config training/configs/lganna-minilm.yaml --steps 60
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace as _r
from pathlib import Path
from typing import Any, Callable

from .trainer import DevEvaluator, Style, TrainConfig, load_config, prepare, sts_dev_pairs, train

VARIANTS: dict[str, tuple[str, Callable[[TrainConfig], TrainConfig]]] = {
    "full": ("the config's recipe (InfoNCE + KL, adaptive mining, instructions not pooled)", lambda c: c),
    "hard-labels": ("hard labels only (no KL term)", lambda c: _r(c, kl_weight=0.0)),
    "mining-none": ("no mining filter (k hardest candidates)", lambda c: _r(c, mining=_r(c.mining, mode="none"))),
    "mining-fixed": ("fixed threshold mining (teacher score < 0.7)", lambda c: _r(c, mining=_r(c.mining, mode="fixed"))),
    "pooled-instructions": ("instruction tokens inside the pooled mean", lambda c: _r(c, include_prompt=True)),
    "no-instructions": ("no instructions (plain queries)", lambda c: _r(c, use_instructions=False)),
    "icl": ("instructions + up to 2 in-context examples (pooled)", lambda c: _r(c, include_prompt=True, icl_max_examples=2)),
}


def run_ablations(config: str | Path, steps: int, out_dir: Path, names: list[str] | None = None) -> dict[str, Any]:
    """Train every variant for ``steps`` steps (finished ones are read back from their export); returns all rows."""
    base = load_config(config)
    base = _r(base, steps=steps, warmup_steps=min(base.warmup_steps, steps // 5), eval_every=max(1, steps // 3),
              save_every=max(1, steps // 3), time_budget_minutes=None)
    rows: dict[str, Any] = {}
    for name in names or list(VARIANTS):
        label, change = VARIANTS[name]
        cfg = change(_r(base, output_dir=str(out_dir / name), export_dir=str(out_dir / name / "final")))
        done = Path(cfg.export_dir) / "lganna.json"
        summary = json.loads(done.read_text())["provenance"] if done.is_file() else train(cfg).summary
        rows[name] = {"label": label, "steps": summary["steps"], "batch_size": summary["batch_size"],
                      "wall_minutes": round(summary["wall_time_s"] / 60, 1), "start": _plain(summary["dev_start"]),
                      "final": _plain(summary["dev_end"])}
    return rows


def _plain(scores: dict[str, float] | None) -> dict[str, float]:
    return {k.removeprefix("dev_"): v for k, v in (scores or {}).items()}


def query_time_rows(config: str | Path, model_dir: Path) -> dict[str, Any]:
    """One trained model's dev scores with its instructions and with plain queries."""
    from lganna_rag.integrations.sentence_transformers import load_sentence_transformer

    cfg = load_config(config)
    model = load_sentence_transformer(str(model_dir))
    model.max_seq_length = cfg.max_length  # as in training
    on = Style("e5", not cfg.include_prompt, "")
    prep = prepare(cfg, on)
    sts = sts_dev_pairs(cfg.dev_sts_pairs, cfg.seed)
    return {"with instructions": _plain(DevEvaluator(prep, on, sts)(model)),
            "without instructions": _plain(DevEvaluator(prep, Style(None, True, ""), sts)(model))}


def write_report(rows: dict[str, Any], query_rows: dict[str, Any], path: Path, title: str) -> None:
    """Write ``ablations.json`` and the Markdown table ``ablations.md`` (all from ``rows``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps({"training": rows, "query_time": query_rows}, indent=2) + "\n")
    full = rows.get("full", {}).get("final", {}).get("dev_score")
    lines = [f"# Ablations of the LG-ANNA recipe ({title}, dev metrics)", "",
             "| variant | steps | STSB dev Spearman | retrieval dev MRR@10 | dev score | vs full | untrained start |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        f = r["final"]
        delta = "" if full is None or name == "full" else f"{f['dev_score'] - full:+.2f}"
        lines.append(f"| {r['label']} | {r['steps']} | {f.get('sts_dev_spearman', 0):.2f} | "
                     f"{f.get('retrieval_dev_mrr10', 0):.2f} | {f['dev_score']:.2f} | {delta} | {r['start'].get('dev_score', 0):.2f} |")
    if query_rows:
        lines += ["", "Query-time variants (one trained model, different query rendering):", "",
                  "| queries | STSB dev Spearman | retrieval dev MRR@10 | dev score |", "|---|---:|---:|---:|"]
        for label, m in query_rows.items():
            lines.append(f"| {label} | {m['sts_dev_spearman']:.2f} | {m['retrieval_dev_mrr10']:.2f} | {m['dev_score']:.2f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Command line: run the ablations and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(Path(__file__).parent / "configs" / "lganna-minilm.yaml"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out-dir", default="runs/ablations")
    parser.add_argument("--only", help="comma-separated variant names: " + ",".join(VARIANTS))
    parser.add_argument("--query-model", help="a trained model directory for the query-time rows")
    parser.add_argument("--report", default="benchmarks/results/ablations.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    rows = run_ablations(args.config, args.steps, Path(args.out_dir), args.only.split(",") if args.only else None)
    query_rows = query_time_rows(args.config, Path(args.query_model)) if args.query_model else {}
    write_report(rows, query_rows, Path(args.report), load_config(args.config).name)
    print(Path(args.report).read_text())


if __name__ == "__main__":
    main()
