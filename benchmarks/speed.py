"""Speed suite: encoder throughput, load time and memory as ratios to MiniLM; a matmul ceiling; vector stores.

Every encoder runs in its own subprocess (clean load time and peak memory), in alternating rounds
so machine noise hits all models alike; throughput is reported as a ratio to MiniLM measured in the
same run. Vector stores (qdrant-edge-py, qdrant-client local mode, FAISS flat and HNSW) are timed on
real MiniLM corpus embeddings, repeated with a small jitter to reach 100k vectors.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lganna_rag.data import data_dir, read_jsonl

from .quality import RESULTS_DIR, _versions


def speed_texts(n: int = 1000) -> list[str]:
    """Real texts of mixed length: STSBenchmark sentences and SciFact abstracts (about 4:1)."""
    sentences: list[str] = []
    for row in read_jsonl(data_dir() / "STSBenchmark" / "test.jsonl"):
        sentences += [row["sentence1"], row["sentence2"]]
    docs = [f"{r.get('title', '')} {r['text']}".strip() for r in read_jsonl(data_dir() / "SciFact" / "corpus.jsonl")]
    n_docs = n // 5
    return sentences[: n - n_docs] + docs[:n_docs]


def matmul_gflops(size: int = 1024, seconds: float = 2.0) -> float:
    """The machine ceiling: float32 ``size x size`` matmul GFLOP/s with torch on all threads."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - start) / 1e9


# ----------------------------------------------------------------------------- one encoder (in a child)
def _child(model: str, n: int, repeats: int, batch_size: int) -> dict[str, Any]:
    """Measure one model in this process: load, first embedding, throughput, tokens, peak RSS."""
    texts = speed_texts(n)
    from lganna_rag import LGAnnaEncoder

    start = time.perf_counter()
    lg = LGAnnaEncoder.from_pretrained(model, device="cpu", precision="fp32")  # "wordllama": the static fast tier; int8: int8_bench
    encode: Callable[[list[str]], Any] = lambda t: lg.encode_documents(t, batch_size=batch_size)  # noqa: E731
    n_tokens = sum(len(ids) for ids in lg.tokenize(texts)[0])
    get_embeddings = getattr(lg.model, "get_input_embeddings", None)
    embed = get_embeddings() if get_embeddings is not None else lg.model  # a static table is all embedding
    params = sum(p.numel() for p in lg.model.parameters()) - (embed.weight.numel() if embed is not None else 0)
    encode(texts[:1])
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        encode(texts)
        times.append(time.perf_counter() - t)
    best = statistics.median(times)
    return {
        "model": model, "texts": len(texts), "tokens": n_tokens, "seconds": best,
        "texts_per_s": len(texts) / best, "tokens_per_s": n_tokens / best,
        "time_to_first_embedding_s": first, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "non_embedding_params": params,
    }


def measure_encoders(models: list[str], n: int = 1000, repeats: int = 3, rounds: int = 2, batch_size: int = 32) -> dict[str, Any]:
    """Run each model in a fresh subprocess, ``rounds`` times alternating; keep each model's median round."""
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
    for _ in range(rounds):
        for model in models:
            out = subprocess.run(
                [sys.executable, "-m", "lganna_rag.benchmarks.speed", "--child", model, "--n", str(n),
                 "--repeats", str(repeats), "--batch-size", str(batch_size)],
                capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            if out.returncode != 0:
                raise RuntimeError(f"speed run of {model!r} failed:\n{out.stderr[-2000:]}")
            runs[model].append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {}
    for model, rs in runs.items():
        rs.sort(key=lambda r: r["texts_per_s"])
        result[model] = rs[len(rs) // 2]
    return result


# ----------------------------------------------------------------------------- vector stores
def corpus_vectors(n_real: int = 10000) -> np.ndarray:
    """Real MiniLM embeddings of short corpus texts (StackOverflow and biomedical titles), cached on disk."""
    from .models import DEFAULT_CACHE, CachedLGAnnaModel

    titles: list[str] = []
    for folder in ("StackOverflowTitleClustering", "BiomedicalTitleClustering"):
        for row in read_jsonl(data_dir() / folder / "test.jsonl"):
            titles += row["sentences"]
    titles = titles[::2][:n_real] if len(titles) >= 2 * n_real else titles[:n_real]
    model = CachedLGAnnaModel("minilm", cache_dir=DEFAULT_CACHE)
    return model._embed(titles, None, None, {"batch_size": 64, "show_progress_bar": False})


def grow(vectors: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors: the real ones, then jittered copies (noise 0.05) so no two are identical."""
    rng = np.random.default_rng(seed)
    reps = [vectors]
    while sum(len(r) for r in reps) < n:
        noisy = vectors + rng.normal(0, 0.05, vectors.shape).astype(np.float32)
        reps.append(noisy / np.linalg.norm(noisy, axis=1, keepdims=True))
    return np.concatenate(reps)[:n].astype(np.float32)


def _latencies(search: Callable[[np.ndarray], list[int]], queries: np.ndarray) -> tuple[list[list[int]], float, float]:
    hits, times = [], []
    for q in queries:
        t = time.perf_counter()
        hits.append(search(q))
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return hits, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _recall(hits: list[list[int]], scores: np.ndarray, k: int) -> float:
    """Recall@k against exact search; a hit tied (within 1e-5) with the exact k-th score counts as correct."""
    kth = -np.sort(-scores, axis=1)[:, k - 1]
    return float(np.mean([sum(scores[i, h] >= kth[i] - 1e-5 for h in hit[:k]) / k for i, hit in enumerate(hits)]))


def bench_stores(vectors: np.ndarray, queries: np.ndarray, k: int = 10, client_max: int = 20000) -> list[dict[str, Any]]:
    """Upsert time and query latency p50/p99 and recall@k (vs exact search) of each store on ``vectors``."""
    scores = queries @ vectors.T
    rows = []

    def record(store: str, upsert_s: float, search: Callable[[np.ndarray], list[int]], **extra: Any) -> None:
        hits, p50, p99 = _latencies(search, queries)
        rows.append({"store": store, "vectors": len(vectors), "upsert_s": round(upsert_s, 3), "query_p50_ms": round(p50, 3),
                     "query_p99_ms": round(p99, 3), f"recall_at_{k}": round(_recall(hits, scores, k), 4), **extra})

    import faiss

    t = time.perf_counter()
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    record("faiss-flat", time.perf_counter() - t, lambda q: flat.search(q[None], k)[1][0].tolist())
    t = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efSearch = 64
    hnsw.add(vectors)
    record("faiss-hnsw", time.perf_counter() - t, lambda q: hnsw.search(q[None], k)[1][0].tolist(), M=32, ef_search=64)

    from qdrant_edge import Distance, EdgeConfig, EdgeShard, EdgeVectorParams, Point, Query, QueryRequest, UpdateOperation

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        shard = EdgeShard.create(tmp, EdgeConfig(vectors=EdgeVectorParams(size=vectors.shape[1], distance=Distance.Cosine)))
        for start in range(0, len(vectors), 1000):
            shard.update(UpdateOperation.upsert_points(
                [Point(i, vectors[i].tolist()) for i in range(start, min(start + 1000, len(vectors)))]))
        shard.flush()
        upsert = time.perf_counter() - t
        record("qdrant-edge", upsert, lambda q: [int(p.id) for p in shard.query(QueryRequest(limit=k, query=Query.Nearest(q.tolist())))])
        t = time.perf_counter()
        shard.optimize()
        optimize = time.perf_counter() - t
        record("qdrant-edge (optimized)", upsert + optimize,
               lambda q: [int(p.id) for p in shard.query(QueryRequest(limit=k, query=Query.Nearest(q.tolist())))],
               optimize_s=round(optimize, 3))
        shard.close()

    if len(vectors) <= client_max:
        from qdrant_client import QdrantClient, models

        client = QdrantClient(location=":memory:")
        t = time.perf_counter()
        client.create_collection("bench", vectors_config=models.VectorParams(size=vectors.shape[1], distance=models.Distance.COSINE))
        for start in range(0, len(vectors), 1000):
            end = min(start + 1000, len(vectors))
            client.upsert("bench", points=models.Batch(ids=list(range(start, end)), vectors=vectors[start:end].tolist()))
        record("qdrant-client (local mode)", time.perf_counter() - t,
               lambda q: [int(p.id) for p in client.query_points("bench", query=q.tolist(), limit=k).points])
        client.close()
    else:
        rows.append({"store": "qdrant-client (local mode)", "vectors": len(vectors),
                     "skipped": f"pure-Python local mode is not run above {client_max:,} vectors (minutes per run)"})
    return rows


def run_speed(models: list[str], *, n: int = 1000, sizes: tuple[int, ...] = (10000, 100000), n_queries: int = 200,
              out_dir: Path = RESULTS_DIR, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole speed suite; writes ``<out_dir>/speed.json`` and returns it."""
    import torch

    if "minilm" not in models:
        models = ["minilm", *models]
    progress("measuring the machine ceiling (matmul) ...")
    ceiling = matmul_gflops()
    progress(f"  {ceiling:.1f} GFLOP/s on {torch.get_num_threads()} threads")
    progress(f"encoding {n} real texts with {', '.join(models)} (subprocess per model, alternating rounds) ...")
    encoders = measure_encoders(models, n=n)
    base = encoders["minilm"]
    for r in encoders.values():
        r["texts_per_s_ratio_to_minilm"] = round(r["texts_per_s"] / base["texts_per_s"], 3)
        r["tokens_per_s_ratio_to_minilm"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
        gflops = 2 * r["non_embedding_params"] * r["tokens"] / r["seconds"] / 1e9
        r["achieved_gflops"] = round(gflops, 2)
        r["fraction_of_ceiling"] = round(gflops / ceiling, 3)
        progress(f"  {r['model']:>12}: {r['texts_per_s']:8.1f} texts/s  {r['tokens_per_s']:9.0f} tok/s  "
                 f"x{r['texts_per_s_ratio_to_minilm']:.2f} MiniLM  load {r['time_to_first_embedding_s']:.2f}s  "
                 f"peak {r['peak_rss_mb']:.0f} MB")
    stores: list[dict[str, Any]] = []
    real_vectors = None
    if sizes:
        progress("vector stores ...")
        real = corpus_vectors(min(max(sizes), 10000))
        real_vectors = len(real)
        queries = grow(real, len(real) + n_queries, seed=1)[len(real):]  # jittered real vectors, not in the set
        for size in sizes:
            rows = bench_stores(grow(real, size), queries)
            for row in rows:
                progress(f"  {size:>7} {row['store']:<28} " + ("skipped" if "skipped" in row else
                         f"upsert {row['upsert_s']:.2f}s  p50 {row['query_p50_ms']:.2f} ms  p99 {row['query_p99_ms']:.2f} ms  "
                         f"recall@10 {row['recall_at_10']:.3f}"))
            stores += rows
    elif (out_dir / "speed.json").is_file():
        # Encoders only: keep the earlier vector-store rows, each with the run that measured it (its versions,
        # threads and ceiling), so no row is shown under this run's versions.
        old = json.loads((out_dir / "speed.json").read_text())
        earlier = {k: old.get(k) for k in ("versions", "cpu_threads", "matmul_gflops", "real_vectors", "queries")}
        stores = [row if "measured_in" in row else {**row, "measured_in": earlier}
                  for row in old.get("vector_stores", []) if "measured_in_earlier_run" not in row]
    result = {"versions": _versions(), "cpu_threads": torch.get_num_threads(), "matmul_gflops": round(ceiling, 2),
              "texts": n, "encoders": encoders, "vector_stores": stores, "real_vectors": real_vectors, "queries": n_queries}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "speed.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":  # child mode, used by measure_encoders
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    print(json.dumps(_child(args.child, args.n, args.repeats, args.batch_size)))
