"""Index benchmarks: indexing overhead, search latency, and dense / BM25 / hybrid retrieval quality.

1. **Overhead**: ``Index.add_files`` on a folder of real documents (SciFact abstracts, one file each)
   versus ``encode_documents`` on exactly the chunk texts it stores, timed in the same process
   (encode, index, encode again; the encode rate is the mean of the two); ``--repeats`` runs of it, each
   written to ``overhead`` (a list: repeats are runs of this command, never merged by hand).
2. **Quality**: nDCG@10 of dense, BM25 (sparse) and hybrid (RRF) search through ``Index`` (local Qdrant
   edge store) on the shared retrieval sets; for ArguAna each query's own document is removed.
   The ``search()`` column is ``Index.search(query, task=...)`` with no mode: what a user gets by default.
3. **Latency**: search p50/p99 at 10k and 100k chunks of real corpus texts (the quality runs' vectors;
   the 100k set repeats them with a little noise instead of re-encoding), end to end (query encoding
   included) and in the engine alone.

Run: ``python -m lganna_rag.benchmarks.index_bench`` (``--sections overhead,quality,latency``, ``--model``).
Writes ``benchmarks/results/index_bench.json`` and ``index_bench.md``. Document vectors are cached in
``benchmarks/cache/index_bench/`` (``.npy``, keyed by model and texts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lganna_rag.encoder import LGAnnaEncoder
from lganna_rag.index import Index
from lganna_rag.ingest import Chunker, discover, load_file
from lganna_rag.metrics import ndcg_at_k
from lganna_rag.sync import chunk_settings

from .tasks import RETRIEVAL_TASKS, load_retrieval

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(__file__).resolve().parent / "cache" / "index_bench"
MODES = ("dense", "sparse", "hybrid")


def _cached_documents(encoder: LGAnnaEncoder, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """``encoder.encode_documents(texts)``, stored as ``.npy`` under :data:`CACHE` (never pickled)."""
    h = hashlib.sha256(json.dumps([encoder.name, encoder.config.to_dict()], sort_keys=True).encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    path = CACHE / f"{h.hexdigest()[:32]}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    vectors = encoder.encode_documents(texts, batch_size=batch_size)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".tmp.npy"), vectors, allow_pickle=False)
    path.with_suffix(".tmp.npy").replace(path)
    return vectors


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2), "n": len(ms)}


# ---------------------------------------------------------------------------------------------- overhead
def measure_overhead(encoder: LGAnnaEncoder, n_docs: int, workdir: Path) -> dict[str, Any]:
    """Chunks/s of ``add_files`` vs ``encode_documents`` on the same chunk texts, same process."""
    data = load_retrieval("SciFact")
    folder = workdir / "scifact-docs"
    folder.mkdir(parents=True)
    for doc_id, _ in zip(data.corpus, range(n_docs)):
        doc = data.corpus[doc_id]
        (folder / f"{doc_id}.txt").write_text(f"{doc['title']}\n\n{doc['text']}\n", encoding="utf-8")
    probe = Index(workdir / "probe", encoder=encoder)  # only to get the chunk settings a new collection gets
    settings = chunk_settings(probe.record, lambda: encoder, None, None)
    chunker = Chunker(encoder.tokenizer, settings["size"], settings["overlap"])
    texts = [c.text for ref in discover([folder]).files for c in chunker.split(load_file(ref).text)]
    encoder.encode_documents(texts[:64])  # warm-up

    def encode_rate() -> float:
        """Chunks/s of one ``encode_documents`` call on all chunk texts."""
        t0 = time.perf_counter()
        encoder.encode_documents(texts, batch_size=32)
        return len(texts) / (time.perf_counter() - t0)

    before = encode_rate()
    index = Index(workdir / "store", encoder=encoder)
    report = index.add_files([folder])
    stored = sorted(p["text"] for _, p in index.backend.scroll(["text"]))
    index.close()
    after = encode_rate()
    if stored != sorted(texts) or report.chunks_written != len(texts):
        raise RuntimeError("the index stored other chunks than the chunker produced; the comparison is void")
    encode = (before + after) / 2
    rate = report.chunks_per_second
    return {
        "files": n_docs, "chunks": len(texts), "index_chunks_per_s": round(rate, 2),
        "encode_chunks_per_s": round(encode, 2), "encode_runs_chunks_per_s": [round(before, 2), round(after, 2)],
        "overhead_pct": round(100 * (1 - rate / encode), 1), "index_seconds": round(report.seconds, 2),
        "index_encode_seconds": round(report.encode_seconds, 2),
        "index_other_seconds": round(report.seconds - report.encode_seconds, 2),
    }


# ---------------------------------------------------------------------------------------------- quality
def measure_quality(encoder: LGAnnaEncoder, tasks: list[str], workdir: Path) -> tuple[dict[str, Any], list[str], np.ndarray, list[str]]:
    """nDCG@10 per task and mode; also returns all corpus texts, their vectors and all queries."""
    results: dict[str, Any] = {}
    all_texts: list[str] = []
    all_vectors: list[np.ndarray] = []
    all_queries: list[str] = []
    for name in tasks:
        data = load_retrieval(name)
        doc_ids, texts = data.document_texts()
        t0 = time.perf_counter()
        vectors = _cached_documents(encoder, texts)
        encode_s = time.perf_counter() - t0
        index = Index(workdir / f"quality-{name}", encoder=encoder)
        t0 = time.perf_counter()
        index.add_texts(texts, ids=doc_ids, vectors=vectors)
        load_s = time.perf_counter() - t0
        qids, queries = list(data.queries), list(data.queries.values())
        qvecs = encoder.encode_queries(queries, task=name, batch_size=32)
        self_excluded = name == "ArguAna"
        k = 11 if self_excluded else 10
        def top10(qid: str, hits: list[Any]) -> dict[str, float]:
            ranked = {h.payload["doc_id"]: h.score for h in hits if not (self_excluded and h.payload["doc_id"] == qid)}
            return dict(list(ranked.items())[:10])

        runs: dict[str, dict[str, dict[str, float]]] = {}
        for mode in MODES:
            runs[mode] = {qid: top10(qid, index.search_by_vector(vec if mode != "sparse" else None, k,
                                                                  text=text if mode != "dense" else None))
                          for qid, text, vec in zip(qids, queries, qvecs)}
        # What a user gets: Index.search with its default mode, the query encoded by the index itself.
        runs["search()"] = {qid: top10(qid, index.search(text, k, task=name)) for qid, text in zip(qids, queries)}
        scores = {mode: round(100 * ndcg_at_k(run, data.qrels, 10), 2) for mode, run in runs.items()}
        index.close()
        results[name] = {**scores, "docs": len(texts), "queries": len(qids), "encode_s": round(encode_s, 1),
                         "load_s": round(load_s, 1), "bm25_avg_len": index.metadata["bm25"]["avg_len"]}
        print(f"{name}: {results[name]}", flush=True)
        all_texts += texts
        all_vectors.append(vectors)
        all_queries += queries
    return results, all_texts, np.concatenate(all_vectors), all_queries


# ---------------------------------------------------------------------------------------------- latency
def measure_latency(encoder: LGAnnaEncoder, texts: list[str], vectors: np.ndarray, queries: list[str],
                    sizes: tuple[int, ...], n_queries: int, workdir: Path, seed: int = 0) -> dict[str, Any]:
    """Search latency percentiles per collection size and mode (end to end, and engine only)."""
    rng = np.random.default_rng(seed)
    picked = [queries[i] for i in rng.choice(len(queries), size=min(n_queries, len(queries)), replace=False)]
    qvecs = encoder.encode_queries(picked, batch_size=32)
    out: dict[str, Any] = {}
    for size in sizes:
        reps = -(-size // len(texts))
        big_texts, big_vectors = [], []
        for r in range(reps):
            n = min(len(texts), size - r * len(texts))
            big_texts += texts[:n] if r == 0 else [f"{t} [copy {r}]" for t in texts[:n]]
            v = vectors[:n] if r == 0 else vectors[:n] + rng.normal(0, 0.01, (n, vectors.shape[1])).astype(np.float32)
            big_vectors.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        index = Index(workdir / f"latency-{size}", encoder=encoder)
        t0 = time.perf_counter()
        index.add_texts(big_texts, ids=list(range(size)), vectors=np.concatenate(big_vectors))
        load_s = time.perf_counter() - t0
        for q, v in zip(picked[:20], qvecs[:20]):  # warm-up
            index.search_by_vector(v, 10, text=q)
        entry: dict[str, Any] = {"chunks": index.count(), "load_and_optimize_s": round(load_s, 1)}
        for mode in MODES:
            engine, total = [], []
            for q, v in zip(picked, qvecs):
                t0 = time.perf_counter()
                index.search_by_vector(v if mode != "sparse" else None, 10, text=q if mode != "dense" else None)
                engine.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                index.search(q, 10, mode=mode)
                total.append(time.perf_counter() - t0)
            entry[mode] = {"engine": _percentiles(engine), "end_to_end": _percentiles(total)}
        index.close()
        out[str(size)] = entry
        print(f"latency {size}: {entry}", flush=True)
        shutil.rmtree(workdir / f"latency-{size}", ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------- report
def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    at = f" at {results['precision']}" if "precision" in results else ""  # older files: fp32, not recorded
    lines = [f"# Index benchmarks ({results['model']}{at}, {results['machine']}, {results['torch_threads']} torch "
             f"threads, load average at start {results['load_average_at_start'][0]})", ""]
    overhead = results.get("overhead", [])
    runs = overhead if isinstance(overhead, list) else [overhead]  # older files hold one run as a dict
    if runs:
        lines += ["## Indexing vs raw encoding (same chunk texts, same process)", "",
                  "| files | chunks | index chunks/s | encode_documents chunks/s | overhead | time outside the encoder |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {o['files']} | {o['chunks']} | {o['index_chunks_per_s']} | {o['encode_chunks_per_s']} "
                  f"| {o['overhead_pct']}% | {100 * o['index_other_seconds'] / o['index_seconds']:.1f}% |" for o in runs]
        lines.append("")
    if "quality" in results:
        q = results["quality"]
        cols = [m for m in (*MODES, "search()") if all(m in r for r in q.values())]  # older files lack search()
        names = {"dense": "dense", "sparse": "BM25", "hybrid": "hybrid (RRF)", "search()": "`Index.search` default"}
        lines += ["## nDCG@10 (Index search: local Qdrant edge store)", "",
                  "| task | " + " | ".join(names[c] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name, r in q.items():
            lines.append(f"| {name} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |")
        lines += ["| **mean** | " + " | ".join(f"**{np.mean([r[c] for r in q.values()]):.2f}**" for c in cols) + " |", ""]
    if "latency" in results:
        lines += ["## Search latency, k=10, ms (`search_by_vector`: query vector given; `search`: the query encoded too)",
                  "", "| chunks | mode | search_by_vector p50 | p99 | search p50 | p99 |", "|---|---|---|---|---|---|"]
        for size, entry in results["latency"].items():
            for mode in MODES:
                e, t = entry[mode]["engine"], entry[mode]["end_to_end"]
                lines.append(f"| {int(size):,} | {mode} | {e['p50_ms']} | {e['p99_ms']} | {t['p50_ms']} | {t['p99_ms']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the chosen sections and write the JSON and Markdown results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model name or directory (default: the default model)")
    parser.add_argument("--sections", default="overhead,quality,latency")
    parser.add_argument("--tasks", default=",".join(RETRIEVAL_TASKS))
    parser.add_argument("--overhead-docs", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=2, help="runs of the overhead measurement (all are written)")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--precision", default="fp32", help="CPU precision (default fp32: the table compares models; "
                        "auto: what users of the model get)")
    parser.add_argument("--out", type=Path, default=RESULTS / "index_bench.json")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = LGAnnaEncoder.from_pretrained(args.model, precision=args.precision)

    results: dict[str, Any] = {
        "model": encoder.name, "precision": encoder.precision, "torch_threads": torch.get_num_threads(),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {platform.machine()}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    workdir = Path(tempfile.mkdtemp(prefix="lganna-index-bench-"))
    try:
        if "overhead" in sections:
            results["overhead"] = []
            for i in range(max(1, args.repeats)):
                results["overhead"].append(measure_overhead(encoder, args.overhead_docs, workdir / f"overhead-{i}"))
                print(f"overhead run {i + 1}: {results['overhead'][-1]}", flush=True)
        if sections & {"quality", "latency"}:
            quality, texts, vectors, queries = measure_quality(encoder, args.tasks.split(","), workdir)
            if "quality" in sections:
                results["quality"] = quality
            if "latency" in sections:
                sizes = tuple(int(s) for s in args.sizes.split(","))
                results["latency"] = measure_latency(encoder, texts, vectors, queries, sizes, args.queries, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
