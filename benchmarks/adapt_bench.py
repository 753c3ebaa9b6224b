"""``lganna-rag adapt`` measured: nDCG@10 of a shared retrieval set before and after adapting to its corpus.

For each task: the corpus (only) is indexed into a fresh local collection with the model; the test
queries are searched (dense and hybrid, through ``Index.search``); the collection is adapted with
``adapt_index(index, minutes)`` (pseudo-queries from the corpus: the test queries and qrels are never seen by
adapt; a check below proves no pseudo-query equals a test query); the same queries are searched again
with the adapter (query side: the stored document vectors are the base model's, and adapt trains the
query encoder against exactly those vectors; ``--both-sides``, which re-embedded the corpus with an adapter
trained on both sides, was removed with that trainer: README gives its last measurement).

``--kinds`` chooses the pseudo-query kinds (default ``ict,heading,crop``); with ``question`` (SmolLM2-135M-Instruct
writes a question for a seeded sample of ``--questions`` chunks) the entry also records the generation's
throughput, a sample of the questions, and the ict+heading entry of the same task for comparison; the
check that no pseudo-query equals a test query then covers the generated questions too (after adapt,
before anything is written). The machine's load average is recorded: these numbers come from a shared CPU.

Settings are chosen on ``train:SOURCE`` sets (:func:`~lganna_rag.benchmarks.tasks.load_training_collection`: a
training file's passages as the corpus and its real questions as queries), never on the reported sets' queries.

Run: ``python -m lganna_rag.benchmarks.adapt_bench --tasks Cranfield --minutes 8``;
``... --kinds question --questions 200 --minutes 12``.
Writes ``benchmarks/results/adapt.json`` (one entry per task, model and non-default kinds; replaced on rerun).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from lganna_rag.adapt import DEFAULT_KINDS, AdaptError, adapt_index, iter_kinds, make_pseudo_queries, words
from lganna_rag.index import Index
from lganna_rag.metrics import ndcg_at_k

from .tasks import load_retrieval, load_training_collection

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


def run_task(task: str, model: str, minutes: float, workdir: Path, seed: int,
             kinds: list[str] | None = None, questions: int = 200, teacher_model: str | None = None,
             lr: float | None = None) -> dict[str, Any]:
    """Index, evaluate, adapt (with ``kinds``), evaluate again; returns the task's entry."""
    kinds = list(kinds or DEFAULT_KINDS)
    load_start = os.getloadavg()
    t_task = time.perf_counter()
    data = load_training_collection(task.split(":", 1)[1]) if task.startswith("train:") else load_retrieval(task)
    ids, texts = data.document_texts()
    titles = [{"title": data.corpus[i].get("title") or ""} for i in ids]
    t0 = time.perf_counter()
    collection = task.lower().replace(":", "-")
    index = Index(workdir / "store", collection=collection, model=model, recreate=True, precision="fp32")
    index.add_texts(texts, metadatas=titles, ids=ids)
    index_s = time.perf_counter() - t0
    before = evaluate(index, data.queries, data.qrels, task)
    print(f"{task} base: {before} (indexed {len(texts)} docs in {index_s:.0f} s)", flush=True)

    # adapt sees the corpus only; prove that none of its pseudo-queries is a test query
    chunks = [(pid, p["text"], p) for pid, p in index.backend.scroll(True)]
    cheap = [k for k in kinds if k != "question"]
    pseudo, _ = make_pseudo_queries(chunks, kinds=cheap, seed=seed) if cheap else ([], {})
    tests = {" ".join(words(q)) for q in data.queries.values()}

    def check_leaks(queries: list[str]) -> None:
        leaked = [q for q in queries if " ".join(words(q)) in tests]
        if leaked:
            raise RuntimeError(f"{len(leaked)} pseudo-queries equal test queries, e.g. {leaked[0]!r}")

    check_leaks([p.query for p in pseudo])

    def show(p: Any) -> None:
        if (p.stage not in ("train", "questions") or p.step % 10 == 0 or p.message
                or (p.stage == "questions" and p.step == p.total)):
            print(f"  {p.stage} {p.step}/{p.total} {p.message}", flush=True)

    entry: dict[str, Any] = {
        "docs": len(texts), "queries": len(data.queries), "base": before, "adapted_query_side": None,
        "index_wall_s": round(index_s, 1), "minutes": minutes, "seed": seed, "kinds": kinds,
        "teacher_model": teacher_model or model,
    }
    t0 = time.perf_counter()
    try:
        report = adapt_index(index, minutes, kinds=kinds, questions=questions, seed=seed, teacher_model=teacher_model,
                             progress=show, **({"lr": lr} if lr else {}))
    except AdaptError as exc:  # e.g. no usable pseudo-query: recorded, and the search stays the base model's
        print(f"{task}: adapt refused: {exc}", flush=True)
        index.close()
        entry.update(adapt_error=str(exc), adapt_wall_s=round(time.perf_counter() - t0, 1),
                     task_wall_s=round(time.perf_counter() - t_task, 1))
        return entry
    entry["adapt_wall_s"] = round(time.perf_counter() - t0, 1)
    check_leaks(list(report.questions.values()))  # generated questions: known only now
    entry["adapted_query_side"] = evaluate(index, data.queries, data.qrels, task) if report.kept else None
    entry["adapt"] = report.to_dict()
    entry["dev_mrr10_curve"] = report.summary.get("dev_mrr10_curve")  # (step, held-out pseudo-query MRR@10)
    print(f"{task} adapted (query side): {entry['adapted_query_side']}; {entry['adapt']}", flush=True)
    if "question" in kinds:
        st = report.kinds
        entry["questions"] = {
            "asked": questions, "sampled": st.get("questions_sampled"), "kept": st.get("question"),
            "unusable": st.get("questions_unusable"), "per_second": st.get("questions_per_second"),
            "generation_wall_s": st.get("questions_seconds"), "model_load_s": st.get("questions_load_seconds"),
            "examples": [report.questions[c] for c in sorted(report.questions)[:12]],
        }
    index.close()
    entry["task_wall_s"] = round(time.perf_counter() - t_task, 1)
    entry["load_average_1m"] = {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2),
                                "cpus": os.cpu_count()}
    return entry


def markdown(results: dict[str, Any]) -> str:
    """A table of a results file: per set, nDCG@10 before/after (after = before when not kept), the judging queries,
    steps, the held-out MRR@10 and the bound the keep rule used."""
    rows = ["| set | chunks | dense before → after | hybrid before → after | kept | judged on (mode, queries) | "
            "held-out MRR@10 base → adapted | 95% lower bound of the gain | steps |",
            "|---|---:|---|---|---|---|---|---:|---:|"]
    for key, e in results["tasks"].items():
        a = e.get("adapt")
        if not a:
            rows.append(f"| {key} | {e['docs']} | refused: {e.get('adapt_error', '')[:60]} | | | | | | |")
            continue
        after = e["adapted_query_side"] or e["base"]
        pair = {m: f"{e['base'][m]} → {after[m]} ({after[m] - e['base'][m]:+.2f})" for m in ("dense", "hybrid")}
        rows.append(f"| {key} | {e['docs']:,} | {pair['dense']} | {pair['hybrid']} | {'kept' if a['kept'] else 'not kept'} "
                    f"| {a['mode']}, {a['dev_queries']} | {a['dev_mrr_base']} → {a['dev_mrr_adapted']} "
                    f"| {a['gain_lower']:+.2f} | {a['steps']} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command line: measure and write ``benchmarks/results/adapt.json``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="Cranfield", help="comma-separated shared retrieval sets, or train:SOURCE for a "
                    "set made from a training file (never reported: for choosing settings), e.g. train:covidqa")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default=",".join(DEFAULT_KINDS), help="pseudo-query kinds (ict, heading, question)")
    ap.add_argument("--questions", type=int, default=200, help="chunks that get a generated question (question kind)")
    ap.add_argument("--teacher-model", default=None, help="the teacher's dense model (default: --model)")
    ap.add_argument("--lr", type=float, default=None, help="adapt's learning rate (default: adapt's own)")
    ap.add_argument("--out", type=Path, default=RESULTS / "adapt.json")
    ap.add_argument("--report-only", action="store_true", help="only write OUT's table (OUT with .md) from OUT")
    args = ap.parse_args(argv)
    if args.report_only:
        args.out.with_suffix(".md").write_text(markdown(json.loads(args.out.read_text())))
        print(f"wrote {args.out.with_suffix('.md')}")
        return
    kinds = iter_kinds(args.kinds)
    import torch
    from lganna_rag import __version__

    results = json.loads(args.out.read_text()) if args.out.is_file() else {"tasks": {}}
    workdir = Path(tempfile.mkdtemp(prefix="adapt-bench-"))
    try:
        for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
            entry = run_task(task, args.model, args.minutes, workdir, args.seed, kinds, args.questions,
                             args.teacher_model, args.lr)
            entry["environment"] = {"lganna_rag": __version__, "torch": torch.__version__,
                                    "threads": torch.get_num_threads(), "machine": platform.machine()}
            key = (f"{task}/{args.model}" + ("" if kinds == list(DEFAULT_KINDS) else "/" + "+".join(kinds))
                   + (f"/teacher-{args.teacher_model}" if args.teacher_model not in (None, args.model) else "")
                   + (f"/lr-{args.lr:g}" if args.lr else ""))
            reference = results["tasks"].get(f"{task}/{args.model}")
            if key != f"{task}/{args.model}" and reference:  # the default-kinds run of the same task, as measured
                entry["compare_default_kinds"] = {"base": reference["base"], "adapted_query_side":
                                                  reference["adapted_query_side"], "adapt_wall_s": reference["adapt_wall_s"],
                                                  "steps": reference["adapt"]["steps"]}
            previous = results["tasks"].get(key)
            if previous and "mode" not in (previous.get("adapt") or {}):  # measured under the dense-only keep rule
                entry["old_keep_rule"] = {"adapted_query_side": previous["adapted_query_side"],
                                          "kept": previous["adapt"]["kept"], "base": previous["base"]}
            elif previous and "old_keep_rule" in previous:
                entry["old_keep_rule"] = previous["old_keep_rule"]
            results["tasks"][key] = entry
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
            args.out.with_suffix(".md").write_text(markdown(results))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
