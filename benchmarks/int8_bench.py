"""int8 vs fp32 CPU inference of one encoder, in the same run: throughput, vector agreement, task quality.

``precision="int8"`` is PyTorch dynamic quantization of the ``nn.Linear`` layers
(:func:`lganna_rag.encoder.quantize_int8`). Both models are loaded in this process and timed in
alternating rounds on the same real texts (so machine noise hits both alike); quality is scored with
mteb's evaluators on a bounded set of shared tasks, one or two per task type (deterministic slices of
the larger ones, so the whole run takes minutes, not hours). No embedding cache is used: the cache
keys on the weight files, which int8 and fp32 share.

    python -m lganna_rag.benchmarks.int8_bench            # writes benchmarks/results/int8.json (+ .md)
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .quality import RESULTS_DIR, _versions, evaluate_task

#: Tasks and deterministic slices (``None``: the whole test set) for the quality comparison.
INT8_TASKS: dict[str, dict[str, int] | None] = {
    "STSBenchmark": None,
    "SICK-R": {"limit": 1000},
    "SciFact": {"queries": 300, "docs": 500},
    "TrecQA": {"limit": 30},
    "MSRP": {"limit": 500},
}


def run_int8_bench(model: str = "minilm", *, n: int = 500, rounds: int = 3, threads: int | None = None,
                   tasks: dict[str, dict[str, int] | None] | None = None, out_dir: Path = RESULTS_DIR,
                   progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure ``model`` at fp32 and int8; writes ``<out_dir>/int8.json`` and ``int8.md`` and returns the result."""
    import torch

    from lganna_rag import LGAnnaEncoder
    from lganna_rag.integrations.mteb import LGAnnaMTEBModel

    from .speed import speed_texts
    from .tasks import shared_task

    if threads:
        torch.set_num_threads(threads)
    texts = speed_texts(n)
    encoders = {p: LGAnnaEncoder.from_pretrained(model, device="cpu", precision=p) for p in ("fp32", "int8")}
    n_tokens = sum(len(ids) for ids in encoders["fp32"].tokenize(texts)[0])
    vectors = {p: e.encode(texts[:64]) for p, e in encoders.items()}  # warm-up
    times: dict[str, list[float]] = {p: [] for p in encoders}
    progress(f"timing fp32 and int8 on {n} real texts, {rounds} alternating rounds, {torch.get_num_threads()} thread(s) ...")
    for _ in range(rounds):
        for p, enc in encoders.items():
            start = time.perf_counter()
            vectors[p] = enc.encode(texts, batch_size=32)
            times[p].append(time.perf_counter() - start)
    speed = {p: {"seconds_median": round(statistics.median(t), 3), "seconds_all": [round(x, 3) for x in t],
                 "texts_per_s": round(n / statistics.median(t), 2), "tokens_per_s": round(n_tokens / statistics.median(t), 1)}
             for p, t in times.items()}
    ratio = speed["int8"]["texts_per_s"] / speed["fp32"]["texts_per_s"]
    cos = (vectors["int8"] * vectors["fp32"]).sum(1)
    progress(f"  fp32 {speed['fp32']['texts_per_s']:.1f} texts/s, int8 {speed['int8']['texts_per_s']:.1f} texts/s: "
             f"{ratio:.2f}x; cosine int8 vs fp32 min {cos.min():.4f} mean {cos.mean():.4f}")

    chosen = tasks if tasks is not None else INT8_TASKS
    quality: dict[str, dict[str, Any]] = {}
    for folder, limits in chosen.items():
        task = shared_task(folder)
        row: dict[str, Any] = {"type": task.task_type, "limits": limits}
        for p, enc in encoders.items():
            entry = evaluate_task(LGAnnaMTEBModel(encoder=enc), task, limits)
            row[p] = entry["main_score"]
            row["metric"] = entry["main_metric"]
            row[f"{p}_wall_s"] = entry["wall_s"]
        row["delta"] = round(row["int8"] - row["fp32"], 2)
        quality[folder] = row
        progress(f"  {folder:<14} {row['metric']:<14} fp32 {row['fp32']:6.2f}  int8 {row['int8']:6.2f}  ({row['delta']:+.2f})")
    by_type: dict[str, dict[str, float]] = {}
    for row in quality.values():
        by_type.setdefault(row["type"], {"fp32": [], "int8": []})  # type: ignore[dict-item]
        by_type[row["type"]]["fp32"].append(row["fp32"])  # type: ignore[union-attr]
        by_type[row["type"]]["int8"].append(row["int8"])  # type: ignore[union-attr]
    type_means = {t: {"fp32": round(float(np.mean(v["fp32"])), 2), "int8": round(float(np.mean(v["int8"])), 2),
                      "delta": round(float(np.mean(v["int8"]) - np.mean(v["fp32"])), 2)} for t, v in by_type.items()}
    mean_delta = round(float(np.mean([r["delta"] for r in quality.values()])), 2) if quality else None
    result = {
        "versions": _versions(), "model": model, "cpu_threads": torch.get_num_threads(), "texts": n, "tokens": n_tokens,
        "speed": speed, "int8_over_fp32_texts_per_s": round(ratio, 3),
        "cosine_int8_vs_fp32": {"min": round(float(cos.min()), 5), "mean": round(float(cos.mean()), 5)},
        "quality": quality, "quality_by_type": type_means, "mean_delta": mean_delta,
        "targets": {"speedup": 1.8, "max_mean_loss_points": 0.5},
    }
    result["recommended_cpu_default"] = recommend(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "int8.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "int8.md").write_text(render_markdown(result))
    return result


def recommend(r: dict[str, Any]) -> str:
    """``int8`` only when it meets both targets (speed-up and mean quality loss) in this run, else ``fp32``."""
    t = r["targets"]
    fast = r["int8_over_fp32_texts_per_s"] >= t["speedup"]
    close = r["mean_delta"] is not None and r["mean_delta"] >= -t["max_mean_loss_points"]
    return "int8" if fast and close else "fp32"


def render_markdown(r: dict[str, Any]) -> str:
    """A short Markdown summary of ``int8.json``."""
    s = r["speed"]
    lines = [
        f"# int8 vs fp32 CPU inference: `{r['model']}`", "",
        "Written by `python -m lganna_rag.benchmarks.int8_bench` (same process, alternating rounds, "
        f"{r['cpu_threads']} torch thread(s), {r['texts']} real texts / {r['tokens']} tokens).", "",
        "| precision | texts/s | tokens/s |", "|---|---:|---:|",
        f"| fp32 | {s['fp32']['texts_per_s']:.1f} | {s['fp32']['tokens_per_s']:.0f} |",
        f"| int8 (dynamic, nn.Linear) | {s['int8']['texts_per_s']:.1f} | {s['int8']['tokens_per_s']:.0f} |", "",
        f"int8 / fp32 = **{r['int8_over_fp32_texts_per_s']:.2f}x** texts/s (target 1.8x). Cosine of int8 to fp32 vectors: "
        f"min {r['cosine_int8_vs_fp32']['min']}, mean {r['cosine_int8_vs_fp32']['mean']}.", "",
        "| task | type | slice | metric | fp32 | int8 | delta |", "|---|---|---|---|---:|---:|---:|",
    ]
    for name, q in r["quality"].items():
        sl = "all" if not q["limits"] else ", ".join(f"{k} {v}" for k, v in q["limits"].items())
        lines.append(f"| {name} | {q['type']} | {sl} | {q['metric']} | {q['fp32']:.2f} | {q['int8']:.2f} | {q['delta']:+.2f} |")
    lines += ["", f"Mean delta over these tasks: **{r['mean_delta']:+.2f}** points (target: at most 0.5 points of loss).", "",
              f"CPU default by this measurement: **{recommend(r)}** (int8 must meet both targets; "
              "`lganna_rag.encoder.CPU_DEFAULT_PRECISION`).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tasks", default=None, help="Comma-separated task folders (default: the INT8_TASKS slices).")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--render", action="store_true", help="Only rewrite int8.md (and the recommendation) from int8.json.")
    a = parser.parse_args()
    if a.render:
        saved = json.loads((a.out / "int8.json").read_text())
        saved["recommended_cpu_default"] = recommend(saved)
        (a.out / "int8.json").write_text(json.dumps(saved, indent=2) + "\n")
        (a.out / "int8.md").write_text(render_markdown(saved))
        raise SystemExit(0)
    picked = {t: INT8_TASKS.get(t) for t in a.tasks.split(",")} if a.tasks else None
    run_int8_bench(a.model, n=a.n, rounds=a.rounds, threads=a.threads, tasks=picked, out_dir=a.out)
