"""Where the encode time goes: OpenVINO bf16 (lganna-rag's ``bf16-openvino``) against ONNX Runtime int8 on the same
texts, per operator type, from each runtime's own profiler.

    python -m lganna_rag.benchmarks.profile_engines --model bge-small --threads 1

Texts: SciFact abstracts cut to 256 tokens (as in ``bench engines``), batches of 32. OpenVINO: ``PERF_COUNT`` on the
compiled model, ``real_time`` summed per executed node type over the batches. ONNX Runtime: its JSON profile of the
int8 graph ``int8-onnx`` runs (bge-small: the shipped graph, which fastembed runs too), ``dur`` summed per op type.
Writes ``profile-<model>.json`` and ``.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .engines import text_sets
from .quality import RESULTS_DIR


def _batches(encoder: Any, texts: list[str], batch: int) -> list[dict[str, np.ndarray]]:
    ids = encoder.tokenize(texts, 256)[0]
    return [{k: v.numpy().astype(np.int64) for k, v in encoder.collate(ids[i:i + batch]).items()}
            for i in range(0, len(ids), batch)]


def profile_openvino(model: str, feeds: list[dict[str, np.ndarray]], threads: int) -> dict[str, Any]:
    """Per node type: OpenVINO's measured ``real_time`` (ms) over all batches, and the wall time."""
    import openvino as ov

    from lganna_rag import LGAnnaEncoder

    enc = LGAnnaEncoder.from_pretrained(model, precision="bf16-openvino", threads=threads, device="cpu")
    compiled = ov.Core().compile_model(str(enc.model.path), "CPU", {
        "INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
        "PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.infer({k: feeds[0][k] for k in ("input_ids", "attention_mask")})  # warm-up, not counted
    by_type: Counter[str] = Counter()
    start = time.perf_counter()
    for feed in feeds:
        request.infer({k: feed[k] for k in ("input_ids", "attention_mask")})
        for info in request.profiling_info:
            if info.status == ov.ProfilingInfo.Status.EXECUTED:
                by_type[info.node_type] += info.real_time.total_seconds() * 1000
    return {"wall_ms": (time.perf_counter() - start) * 1000, "by_type_ms": dict(by_type)}


def profile_onnxruntime(model: str, feeds: list[dict[str, np.ndarray]], threads: int, work: Path) -> dict[str, Any]:
    """Per op type: ONNX Runtime's profiled ``dur`` (ms) over all batches of the ``int8-onnx`` graph, and the wall
    time."""
    import onnxruntime as ort

    from lganna_rag import LGAnnaEncoder

    enc = LGAnnaEncoder.from_pretrained(model, precision="int8-onnx", threads=threads, device="cpu")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(work / "ort")
    session = ort.InferenceSession(str(enc.model.path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}

    def feed_of(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: f[k] for k in ("input_ids", "attention_mask")}
        if "token_type_ids" in names:
            out["token_type_ids"] = np.zeros_like(f["input_ids"])
        return out

    session.run(None, feed_of(feeds[0]))  # warm-up (its events are dropped below: the first run's)
    start = time.perf_counter()
    for feed in feeds:
        session.run(None, feed_of(feed))
    wall = (time.perf_counter() - start) * 1000
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    first_end = runs[0]["ts"] + runs[0]["dur"] if runs else 0
    by_type: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] > first_end:
            by_type[e["args"]["op_name"]] += e["dur"] / 1000
    return {"wall_ms": wall, "by_type_ms": dict(by_type)}


def markdown(result: dict[str, Any]) -> str:
    """The two profiles as one table of shares (top operator types of each)."""
    lines = [f"# Where the time goes: {result['model']}, {result['threads']} thread(s), {result['texts']} texts of "
             f"256 tokens in batches of {result['batch']}", "",
             "`python -m lganna_rag.benchmarks.profile_engines`; each runtime's own profiler, summed per operator "
             "type (ms, share of that runtime's profiled total); wall time of the profiled batches in the header.", ""]
    for name, prof in result["profiles"].items():
        total = sum(prof["by_type_ms"].values()) or 1.0
        lines += [f"## {name}: {prof['wall_ms']:.0f} ms wall, {total:.0f} ms profiled", "",
                  "| operator type | ms | share |", "|---|---:|---:|"]
        for op, ms in sorted(prof["by_type_ms"].items(), key=lambda kv: -kv[1])[:10]:
            lines.append(f"| {op} | {ms:.0f} | {100 * ms / total:.1f}% |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bge-small")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lganna_rag import LGAnnaEncoder

    encoder = LGAnnaEncoder.from_pretrained(args.model, precision="fp32", device="cpu")
    texts = text_sets(encoder.tokenizer, args.n)["passages-256"]
    feeds = _batches(encoder, texts, args.batch)
    with tempfile.TemporaryDirectory(prefix="lganna-profile-") as tmp:
        result = {"model": args.model, "threads": args.threads, "texts": len(texts), "batch": args.batch,
                  "profiles": {"OpenVINO bf16 (bf16-openvino)": profile_openvino(args.model, feeds, args.threads),
                               "ONNX Runtime int8 (int8-onnx)": profile_onnxruntime(args.model, feeds, args.threads,
                                                                                   Path(tmp))}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile-{args.model}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"profile-{args.model}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
