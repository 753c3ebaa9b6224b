"""``lganna-rag adapt`` measured: nDCG@10 of a shared retrieval set before and after adapting to its corpus.

For each task: the corpus (only) is indexed into a fresh local collection with the model; the test
queries are searched (dense and hybrid, through ``Index.search``); the collection is adapted with
``Index.adapt(minutes)`` (pseudo-queries from the corpus: the test queries and qrels are never seen by
adapt; a check below proves no pseudo-query equals a test query); the same queries are searched again
with the adapter (query side: the stored document vectors are the base model's). ``--both-sides`` also
re-embeds the corpus with the adapted model into a second collection, to measure what the
query-side-only choice gives up.

Run: ``python -m lganna_rag.benchmarks.adapt_bench --tasks Cranfield --minutes 8 [--both-sides]``.
Writes ``benchmarks/results/adapt.json`` (one entry per task, replaced on rerun).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from lganna_rag.adapt import make_pseudo_queries, words
from lganna_rag.index import Index

from .tasks import load_retrieval, ndcg_at_k

RESULTS = Path(__file__).resolve().parent / "results"


def evaluate(index: Index, queries: dict[str, str], qrels: dict[str, dict[str, int]], task: str) -> dict[str, float]:
    """nDCG@10 (x100) of dense and hybrid search through ``index`` (ArguAna: each query's own document removed)."""
    out = {}
    own = task == "ArguAna"
    for mode in ("dense", "hybrid"):
        run: dict[str, dict[str, float]] = {}
        for qid, text in queries.items():
            hits = index.search(text, 11 if own else 10, mode=mode)
            ranked = {h.payload["doc_id"]: h.score for h in hits if not (own and h.payload["doc_id"] == qid)}
            run[qid] = dict(list(ranked.items())[:10])
        out[mode] = round(100 * ndcg_at_k(run, qrels, 10), 2)
    return out


def run_task(task: str, model: str, minutes: float, both_sides: bool, workdir: Path, seed: int) -> dict[str, Any]:
    """Index, evaluate, adapt, evaluate again; returns the task's entry."""
    data = load_retrieval(task)
    ids, texts = data.document_texts()
    titles = [{"title": data.corpus[i].get("title") or ""} for i in ids]
    t0 = time.perf_counter()
    index = Index(workdir / "store", collection=task.lower(), model=model, recreate=True)
    index.add_texts(texts, metadatas=titles, ids=ids)
    index_s = time.perf_counter() - t0
    before = evaluate(index, data.queries, data.qrels, task)
    print(f"{task} base: {before} (indexed {len(texts)} docs in {index_s:.0f} s)", flush=True)

    # adapt sees the corpus only; prove that none of its pseudo-queries is a test query
    chunks = [(pid, p["text"], p) for pid, p in index.backend.scroll(True)]
    pseudo, _ = make_pseudo_queries(chunks, seed=seed)
    tests = {" ".join(words(q)) for q in data.queries.values()}
    leaked = [p.query for p in pseudo if " ".join(words(p.query)) in tests]
    if leaked:
        raise RuntimeError(f"{len(leaked)} pseudo-queries equal test queries, e.g. {leaked[0]!r}")

    def show(p: Any) -> None:
        if p.stage != "train" or p.step % 10 == 0:
            print(f"  {p.stage} {p.step}/{p.total} {p.message}", flush=True)

    t0 = time.perf_counter()
    report = index.adapt(minutes, seed=seed, progress=show)
    adapt_s = time.perf_counter() - t0
    after = evaluate(index, data.queries, data.qrels, task) if report.kept else None
    print(f"{task} adapted (query side): {after}; {report.to_dict()}", flush=True)
    entry: dict[str, Any] = {
        "docs": len(texts), "queries": len(data.queries), "base": before, "adapted_query_side": after,
        "adapt": report.to_dict(), "adapt_wall_s": round(adapt_s, 1), "index_wall_s": round(index_s, 1),
        "minutes": minutes, "seed": seed,
    }
    if both_sides and report.kept:
        encoder = index.query_encoder
        t0 = time.perf_counter()
        both = Index(workdir / "store", collection=task.lower() + "-both", encoder=encoder, recreate=True)
        both.add_texts(texts, metadatas=titles, ids=ids)
        entry["reembed_wall_s"] = round(time.perf_counter() - t0, 1)
        entry["adapted_both_sides"] = evaluate(both, data.queries, data.qrels, task)
        print(f"{task} adapted (both sides): {entry['adapted_both_sides']}", flush=True)
        both.close()
    index.close()
    return entry


def main(argv: list[str] | None = None) -> None:
    """Command line: measure and write ``benchmarks/results/adapt.json``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="Cranfield", help="comma-separated shared retrieval sets")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--both-sides", action="store_true", help="also re-embed the corpus with the adapter")
    ap.add_argument("--out", type=Path, default=RESULTS / "adapt.json")
    args = ap.parse_args(argv)
    import torch
    from lganna_rag import __version__

    results = json.loads(args.out.read_text()) if args.out.is_file() else {"tasks": {}}
    workdir = Path(tempfile.mkdtemp(prefix="adapt-bench-"))
    try:
        for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
            entry = run_task(task, args.model, args.minutes, args.both_sides, workdir, args.seed)
            entry["environment"] = {"lganna_rag": __version__, "torch": torch.__version__,
                                    "threads": torch.get_num_threads(), "machine": platform.machine()}
            results["tasks"][f"{task}/{args.model}"] = entry
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
