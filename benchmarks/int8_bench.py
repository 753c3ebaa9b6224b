"""int8 vs fp32 CPU inference of one encoder, in the same run: throughput, vector agreement, task quality.

Three precisions of :meth:`lganna_rag.LGAnnaEncoder.from_pretrained` are compared: ``fp32``, ``int8-torch``
(PyTorch dynamic quantization of the ``nn.Linear`` layers, :func:`lganna_rag.encoder.quantize_int8`) and
``int8-onnx`` (ONNX Runtime int8, :mod:`lganna_rag.onnx_int8`; left out with a note when onnxruntime is not
installed). All are loaded in this process and timed in alternating rounds on the same real texts (so machine
noise hits them alike); each int8 speed is a ratio to the fp32 of the same run. Quality is scored with mteb's
evaluators on a bounded set of shared tasks, one or two per task type (deterministic slices of the larger
ones, so the whole run takes minutes, not hours). No embedding cache is used: the cache keys on the weight
files, which all precisions share.

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


#: The precisions compared (``int8-onnx`` only where onnxruntime is installed), and how the tables name them.
PRECISIONS = ("fp32", "int8-torch", "int8-onnx")
LABELS = {"fp32": "fp32", "int8-torch": "int8, PyTorch dynamic (nn.Linear)", "int8-onnx": "int8, ONNX Runtime dynamic"}


def run_int8_bench(model: str = "minilm", *, n: int = 500, rounds: int = 3, threads: int | None = None,
                   tasks: dict[str, dict[str, int] | None] | None = None, out_dir: Path = RESULTS_DIR,
                   note: str = "", progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure ``model`` at each of :data:`PRECISIONS`; writes ``<out_dir>/int8.json`` and ``int8.md`` and returns it.

    ``note`` (e.g. how loaded the machine was) is stored and printed under the speed table.
    """
    import torch

    from lganna_rag import LGAnnaEncoder
    from lganna_rag.integrations.mteb import LGAnnaMTEBModel
    from lganna_rag.onnx_int8 import onnx_available

    from .speed import speed_texts
    from .tasks import shared_task

    if threads:
        torch.set_num_threads(threads)
    precisions = [p for p in PRECISIONS if p != "int8-onnx" or onnx_available()]
    if "int8-onnx" not in precisions:
        progress("onnxruntime is not installed: int8-onnx left out (pip install 'lganna-rag[onnx]')")
    texts = speed_texts(n)
    encoders = {p: LGAnnaEncoder.from_pretrained(model, device="cpu", precision=p) for p in precisions}
    n_tokens = sum(len(ids) for ids in encoders["fp32"].tokenize(texts)[0])
    vectors = {p: e.encode(texts[:64]) for p, e in encoders.items()}  # warm-up
    times: dict[str, list[float]] = {p: [] for p in encoders}
    progress(f"timing {', '.join(precisions)} on {n} real texts, {rounds} alternating rounds, "
             f"{torch.get_num_threads()} thread(s) ...")
    for _ in range(rounds):
        for p, enc in encoders.items():
            start = time.perf_counter()
            vectors[p] = enc.encode(texts, batch_size=32)
            times[p].append(time.perf_counter() - start)
    speed = {p: {"seconds_median": round(statistics.median(t), 3), "seconds_all": [round(x, 3) for x in t],
                 "texts_per_s": round(n / statistics.median(t), 2), "tokens_per_s": round(n_tokens / statistics.median(t), 1)}
             for p, t in times.items()}
    variants: dict[str, dict[str, Any]] = {}
    for p in precisions[1:]:
        cos = (vectors[p] * vectors["fp32"]).sum(1)
        ratio = speed[p]["texts_per_s"] / speed["fp32"]["texts_per_s"]
        variants[p] = {"over_fp32_texts_per_s": round(ratio, 3),
                       "cosine_vs_fp32": {"min": round(float(cos.min()), 5), "mean": round(float(cos.mean()), 5)}}
        progress(f"  {p}: {speed[p]['texts_per_s']:.1f} texts/s vs fp32 {speed['fp32']['texts_per_s']:.1f}: "
                 f"{ratio:.2f}x; cosine to fp32 min {cos.min():.4f} mean {cos.mean():.4f}")

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
        for p in variants:
            row[f"{p}_delta"] = round(row[p] - row["fp32"], 2)
        quality[folder] = row
        progress(f"  {folder:<14} {row['metric']:<14} " + "  ".join(f"{p} {row[p]:6.2f}" for p in encoders))
    for p, v in variants.items():
        deltas = [r[f"{p}_delta"] for r in quality.values()]
        v["mean_delta"] = round(float(np.mean(deltas)), 2) if deltas else None
        by_type: dict[str, list[float]] = {}
        for r in quality.values():
            by_type.setdefault(r["type"], []).append(r[f"{p}_delta"])
        v["delta_by_type"] = {t: round(float(np.mean(d)), 2) for t, d in by_type.items()}
    result = {
        "versions": _versions(), "model": model, "cpu_threads": torch.get_num_threads(), "texts": n, "tokens": n_tokens,
        "rounds": rounds, "note": note, "speed": speed, "variants": variants, "quality": quality,
        "targets": {"speedup": 1.8, "max_mean_loss_points": 0.5},
    }
    result["recommended_cpu_default"] = recommend(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "int8.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "int8.md").write_text(render_markdown(result))
    return result


def meets_targets(variant: dict[str, Any], targets: dict[str, float]) -> bool:
    """True when an int8 variant is at least ``speedup`` x fp32 and loses at most ``max_mean_loss_points``."""
    fast = variant["over_fp32_texts_per_s"] >= targets["speedup"]
    close = variant.get("mean_delta") is not None and variant["mean_delta"] >= -targets["max_mean_loss_points"]
    return fast and close


def recommend(r: dict[str, Any]) -> str:
    """The fastest int8 variant that meets both targets (speed-up and mean quality loss) in this run, else ``fp32``."""
    good = [(v["over_fp32_texts_per_s"], p) for p, v in r["variants"].items() if meets_targets(v, r["targets"])]
    return max(good)[1] if good else "fp32"


def render_markdown(r: dict[str, Any]) -> str:
    """A short Markdown summary of ``int8.json``."""
    s, t, v = r["speed"], r["targets"], r["variants"]
    lines = [
        f"# int8 vs fp32 CPU inference: `{r['model']}`", "",
        "Written by `python -m lganna_rag.benchmarks.int8_bench` (same process, alternating rounds, "
        f"{r['cpu_threads']} thread(s), {r['texts']} real texts / {r['tokens']} tokens, {r.get('rounds', 3)} rounds).", "",
        "| precision | texts/s | tokens/s | x fp32 | cosine to fp32 (min / mean) | mean quality delta |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for p, sp in s.items():
        if p == "fp32":
            lines.append(f"| fp32 | {sp['texts_per_s']:.1f} | {sp['tokens_per_s']:.0f} | 1.00 | 1 / 1 | 0 |")
        else:
            c = v[p]["cosine_vs_fp32"]
            lines.append(f"| `{p}`: {LABELS.get(p, p)} | {sp['texts_per_s']:.1f} | {sp['tokens_per_s']:.0f} | "
                         f"**{v[p]['over_fp32_texts_per_s']:.2f}** | {c['min']:.4f} / {c['mean']:.4f} | "
                         f"**{v[p]['mean_delta']:+.2f}** |")
    if r.get("note"):
        lines += ["", r["note"]]
    lines += ["", f"Targets: at least {t['speedup']}x fp32 texts/s and at most {t['max_mean_loss_points']} points of mean "
              "loss over the tasks below.", ""]
    names = [p for p in s if p != "fp32"]
    lines += ["| task | type | slice | metric | fp32 | " + " | ".join(names) + " |",
              "|---|---|---|---|---:|" + "---:|" * len(names)]
    for name, q in r["quality"].items():
        sl = "all" if not q["limits"] else ", ".join(f"{k} {v_}" for k, v_ in q["limits"].items())
        cells = " | ".join(f"{q[p]:.2f} ({q[p + '_delta']:+.2f})" for p in names)
        lines.append(f"| {name} | {q['type']} | {sl} | {q['metric']} | {q['fp32']:.2f} | {cells} |")
    lines.append("")
    for p in names:
        by_type = ", ".join(f"{k} {d:+.2f}" for k, d in v[p]["delta_by_type"].items())
        verdict = "meets both targets" if meets_targets(v[p], t) else "misses: " + "; ".join(
            x for x in (f"speed {v[p]['over_fp32_texts_per_s']:.2f}x < {t['speedup']}x"
                        if v[p]["over_fp32_texts_per_s"] < t["speedup"] else "",
                        f"mean loss {-v[p]['mean_delta']:.2f} > {t['max_mean_loss_points']} points"
                        if v[p]["mean_delta"] < -t["max_mean_loss_points"] else "") if x)
        lines.append(f"- `{p}`: mean delta {v[p]['mean_delta']:+.2f} points (by type: {by_type}); {verdict}.")
    lines += ["", f"CPU default by this measurement: **{recommend(r)}** (an int8 variant must meet both targets; "
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
    parser.add_argument("--note", default="", help="A line on the conditions (e.g. machine load), written under the speed table.")
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
    run_int8_bench(a.model, n=a.n, rounds=a.rounds, threads=a.threads, tasks=picked, out_dir=a.out, note=a.note)
