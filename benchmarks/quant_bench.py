"""Qdrant scalar int8 quantization of stored vectors (qdrant-edge), against full precision, at 100k vectors.

Real MiniLM embeddings of short corpus texts (cached), grown to ``size`` with jittered copies as in the
speed suite; the same queries (jittered real vectors not in the set) go to a float32 shard and to a
shard with scalar int8 quantization (quantile 0.99, kept in RAM), searched with and without rescoring
on the original vectors (oversampling 2). Reports recall@10 against exact search, p50/p99 latency, the
bytes of dense vector data each keeps in RAM, and the shards' disk size.

    python -m lganna_rag.benchmarks.quant_bench --size 100000      # writes benchmarks/results/quant.json (+ .md)
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .quality import RESULTS_DIR, _versions
from .speed import _latencies, _recall, corpus_vectors, grow


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _shard(path: Path, vectors: np.ndarray, quantized: bool) -> tuple[Any, float]:
    import qdrant_edge as qe

    config = qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99, always_ram=True) if quantized else None
    params = qe.EdgeVectorParams(size=vectors.shape[1], distance=qe.Distance.Cosine, quantization_config=config)
    start = time.perf_counter()
    shard = qe.EdgeShard.create(str(path), qe.EdgeConfig(vectors=params))
    for i in range(0, len(vectors), 1000):
        shard.update(qe.UpdateOperation.upsert_points(
            [qe.Point(j, vectors[j].tolist()) for j in range(i, min(i + 1000, len(vectors)))]))
    shard.flush()
    shard.optimize()  # builds the HNSW index and the quantized copy
    return shard, time.perf_counter() - start


def run_quant_bench(size: int = 100_000, n_queries: int = 200, k: int = 10, out_dir: Path = RESULTS_DIR,
                    progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure full-precision vs scalar-int8 qdrant-edge shards; writes ``<out_dir>/quant.json`` and ``quant.md``."""
    import qdrant_edge as qe

    real = corpus_vectors(min(size, 10000))
    vectors = grow(real, size)
    queries = grow(real, len(real) + n_queries, seed=1)[len(real):]
    scores = queries @ vectors.T
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, quantized in (("float32", False), ("int8 scalar", True)):
            path = Path(tmp) / label.replace(" ", "_")
            progress(f"building the {label} shard ({size:,} x {vectors.shape[1]}) ...")
            shard, build_s = _shard(path, vectors, quantized)
            modes = [("", None)] if not quantized else [
                (", rescored (oversampling 2)", qe.QuantizationSearchParams(rescore=True, oversampling=2.0)),
                (", no rescoring", qe.QuantizationSearchParams(rescore=False)),
            ]
            for suffix, qparams in modes:
                params = qe.SearchParams(hnsw_ef=64, quantization=qparams) if qparams is not None else qe.SearchParams(hnsw_ef=64)

                def search(q: np.ndarray, params: Any = params) -> list[int]:
                    request = qe.QueryRequest(limit=k, query=qe.Query.Nearest(q.tolist()), params=params)
                    return [int(p.id) for p in shard.query(request)]

                hits, p50, p99 = _latencies(search, queries)
                row = {"store": f"qdrant-edge {label}{suffix}", "vectors": size, "build_s": round(build_s, 2),
                       f"recall_at_{k}": round(_recall(hits, scores, k), 4), "query_p50_ms": round(p50, 3),
                       "query_p99_ms": round(p99, 3), "disk_mb": round(_dir_bytes(path) / 1e6, 1),
                       "vector_ram_mb": round(size * vectors.shape[1] * (1 if quantized else 4) / 1e6, 1)}
                rows.append(row)
                progress(f"  {row['store']}: recall@{k} {row[f'recall_at_{k}']:.4f}, p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
                         f"disk {row['disk_mb']} MB")
            shard.close()
    result = {"versions": _versions(), "vectors": size, "dimension": int(vectors.shape[1]), "real_vectors": len(real),
              "queries": n_queries, "k": k, "hnsw_ef": 64, "rows": rows,
              "note": "vector_ram_mb: the dense data searched in RAM (float32: 4 bytes/dim; int8: 1 byte/dim, the "
                      "float32 originals stay on disk for rescoring)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quant.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Qdrant scalar int8 quantization of stored vectors (qdrant-edge)", "",
             f"Written by `python -m lganna_rag.benchmarks.quant_bench --size {size}`: {size:,} x {result['dimension']} MiniLM "
             f"vectors ({len(real):,} real, the rest jittered copies), {n_queries} queries, HNSW ef 64, recall@{k} against "
             "exact search.", "",
             f"| store | recall@{k} | p50 ms | p99 ms | dense data in RAM (MB) | disk (MB) | build s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['store']} | {r[f'recall_at_{k}']:.4f} | {r['query_p50_ms']} | {r['query_p99_ms']} | "
                     f"{r['vector_ram_mb']} | {r['disk_mb']} | {r['build_s']} |")
    (out_dir / "quant.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    a = parser.parse_args()
    run_quant_bench(a.size, a.queries, out_dir=a.out)
