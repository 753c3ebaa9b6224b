"""Quality suite: every shared task as an mteb task object with the local data injected, scored by mteb.

mteb's own task classes, evaluators and main metrics do the scoring (retrieval nDCG@10, reranking
MAP@1000, STS cosine Spearman, classification accuracy with mteb's logistic-regression protocol,
clustering V-measure, pair classification max AP). Tasks MTEB does not have are built from an MTEB
task of the same type with their own name. Nothing is downloaded: the data comes from
``$LGANNA_DATA``; ``lganna-rag bench`` sets ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` (importing this module does not).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

from lganna_rag.data import data_dir

from .tasks import (
    DEV_TASKS,
    SHARED_TASKS,
    RetrievalData,
    SharedTask,
    limit_retrieval,
    load_classification,
    load_clustering,
    load_pairs,
    load_reranking,
    load_retrieval,
    shared_task,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: An MTEB task of each type whose class and metadata host the tasks MTEB does not have.
_TEMPLATES = {
    "retrieval": "SciFact",
    "reranking": "AskUbuntuDupQuestions",
    "sts": "STSBenchmark",
    "classification": "Banking77Classification",
    "clustering": "TwentyNewsgroupsClustering",
    "pair_classification": "TwitterSemEval2015",
}

#: ``--quick``: one small deterministic slice per task type (CI smoke test, about a minute on 2 cores).
QUICK_TASKS: dict[str, dict[str, int]] = {
    "SciFact": {"queries": 40, "docs": 400},
    "TrecQA": {"limit": 15},
    "STSBenchmark": {"limit": 300},
    "Banking77": {"limit": 400},
    "TwentyNewsgroupsClustering": {"limit": 600},
    "MSRP": {"limit": 300},
}

#: Published MTEB scores of sentence-transformers/all-MiniLM-L6-v2 (MTEB results repository).
PUBLISHED_MINILM = {
    "SciFact": 64.51, "NFCorpus": 31.59, "ArguAna": 50.17, "SCIDOCS": 21.64, "FiQA2018": 36.87,
    "STSBenchmark": 82.03, "SICK-R": 77.58, "BIOSSES": 81.64, "Banking77Classification": 80.04,
    "STS12": 72.37, "STS13": 80.60, "STS15": 85.39, "STS17": 87.59,
}


def data_fingerprint(folder: Path) -> str:
    """sha256 (16 hex) over the names and bytes of the files of a task folder."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _retrieval_split(data: RetrievalData, reranking: bool) -> dict[str, Any]:
    from datasets import Dataset
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    ids = list(data.corpus)
    corpus = Dataset.from_dict({
        "id": ids, "title": [data.corpus[i]["title"] for i in ids], "text": [data.corpus[i]["text"] for i in ids],
    })
    qids = list(data.queries)
    queries = Dataset.from_dict({"id": qids, "text": [data.queries[q] for q in qids]})
    top_ranked = {q: list(data.qrels[q]) for q in qids} if reranking else None
    return RetrievalSplitData(corpus=corpus, queries=queries, relevant_docs=data.qrels, top_ranked=top_ranked)


def build_task(task: SharedTask, limits: dict[str, int] | None = None, root: Path | None = None) -> Any:
    """An mteb task object for ``task`` with its local data loaded (``limits``: a deterministic slice)."""
    import mteb
    from datasets import Dataset, DatasetDict

    limits = limits or {}
    limit = limits.get("limit")
    folder = (root or data_dir()) / task.folder
    if task.mteb_name:
        obj = mteb.get_task(task.mteb_name)
    else:
        template = mteb.get_task(_TEMPLATES[task.task_type])
        base = type(template).__mro__[1]  # the AbsTask* class of that type
        meta = template.metadata.model_copy(update={
            "name": task.folder, "description": task.note or task.folder,
            "dataset": {"path": f"local/{task.folder}", "revision": "local"},
        })
        obj = type(f"Local{task.folder.replace('-', '')}", (base,), {"metadata": meta})()
    subset = task.subset
    obj.hf_subsets = [subset]

    kind = task.task_type
    if kind == "retrieval":
        data = load_retrieval(task.folder, split=task.split, root=root)
        if "queries" in limits:
            data = limit_retrieval(data, limits["queries"], limits.get("docs", 1000))
        dataset: Any = {"test": _retrieval_split(data, reranking=False)}
    elif kind == "reranking":
        dataset = {"test": _retrieval_split(load_reranking(folder, limit, task.split), reranking=True)}
    elif kind == "sts":
        dataset = DatasetDict({"test": Dataset.from_dict(load_pairs(folder, "score", limit, task.split))})
    elif kind == "pair_classification":
        pairs = load_pairs(folder, "label", limit, task.split)
        dataset = DatasetDict({"test": Dataset.from_dict({
            obj.input1_column_name: pairs["sentence1"], obj.input2_column_name: pairs["sentence2"],
            obj.label_column_name: [int(x) for x in pairs["label"]],
        })})
    elif kind == "classification":
        splits = load_classification(folder, limit, task.split)
        dataset = DatasetDict({name: Dataset.from_dict(cols) for name, cols in splits.items()})
    elif kind == "clustering":
        dataset = DatasetDict({"test": Dataset.from_dict(load_clustering(folder, limit))})
    else:
        raise ValueError(f"unsupported task type {kind!r}")
    obj.dataset = {subset: dataset}
    obj.data_loaded = True
    return obj


def evaluate_task(model: Any, task: SharedTask, limits: dict[str, int] | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Score ``model`` on one shared task with mteb; returns the main score (x100), all scores and wall time."""
    obj = build_task(task, limits)
    start = time.perf_counter()
    scores = obj.evaluate(model, split="test", subsets_to_run=[task.subset],
                          encode_kwargs={"batch_size": batch_size, "show_progress_bar": False})
    wall = time.perf_counter() - start
    subset_scores = scores[task.subset]
    flat = {k: float(v) for k, v in subset_scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {
        "mteb_name": task.mteb_name,
        "type": task.task_type,
        "main_metric": obj.metadata.main_score,
        "main_score": round(100 * float(subset_scores["main_score"]), 2),
        "scores": flat,
        "wall_s": round(wall, 2),
        "note": task.note,
    }


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("lganna-rag", "mteb", "torch", "transformers", "sentence-transformers", "bm25s", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    out["python"] = platform.python_version()
    return out


def _model_label(name: str) -> str:
    """The results file's name for a model: ``hybrid:runs/x/final`` -> ``hybrid-final`` (never the dense model's)."""
    prefix, sep, rest = name.partition(":")
    if sep and prefix in ("hybrid", "plain"):
        return f"{prefix}-{_model_label(rest)}"
    return (Path(name).name if os.sep in name or name.startswith(".") else name.replace(":", "-")).replace("@", "-at-")


def run_quality(
    models: list[str],
    tasks: list[str] | None = None,
    *,
    quick: bool = False,
    dev: bool = False,
    out_dir: Path = RESULTS_DIR,
    batch_size: int = 32,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Score each model on each task; writes ``<out_dir>/<model>.json`` after every task and returns all results.

    ``quick`` runs :data:`QUICK_TASKS` (small deterministic slices) and writes ``<model>.quick.json``; ``dev`` runs
    :data:`DEV_TASKS` (dev/validation splits, for choosing models without reading a test split) into ``<model>.dev.json``.
    """
    from .models import DEFAULT_CACHE, SEARCH_ONLY, load_model

    if quick and dev:
        raise ValueError("--quick and --dev are different task sets: choose one")
    selected = [shared_task(t) for t in tasks] if tasks else (
        [shared_task(t) for t in QUICK_TASKS] if quick else list(DEV_TASKS if dev else SHARED_TASKS)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    all_results = {}
    for name in models:
        label = _model_label(name)
        model = load_model(name, cache_dir=cache_dir or DEFAULT_CACHE)
        result: dict[str, Any] = {
            "model": name, "quick": quick, "dev": dev, "versions": _versions(),
            "fingerprint": getattr(model, "fingerprint", None), "tasks": {},
        }
        path = out_dir / f"{label}{'.quick' if quick else '.dev' if dev else ''}.json"
        started = time.perf_counter()
        for task in selected:
            if name.split(":")[0] in SEARCH_ONLY and task.task_type not in ("retrieval", "reranking"):
                continue
            limits = QUICK_TASKS.get(task.folder) if quick else None
            entry = evaluate_task(model, task, limits, batch_size)
            entry["data_fingerprint"] = data_fingerprint(data_dir() / task.folder)
            result["tasks"][task.key] = entry
            result["wall_s"] = round(time.perf_counter() - started, 1)
            path.write_text(json.dumps(result, indent=2) + "\n")
            progress(f"{label:>12} {task.key:<30} {entry['main_metric']:<16} {entry['main_score']:6.2f}  ({entry['wall_s']:.0f}s)")
        all_results[label] = result
    return all_results


def validation_table(minilm_result: dict[str, Any]) -> list[tuple[str, float | None, float, float | None]]:
    """(task, our MiniLM score, published score, difference) for tasks with a published MiniLM value."""
    rows = []
    for folder, entry in minilm_result["tasks"].items():
        name = entry.get("mteb_name") or folder
        if name in PUBLISHED_MINILM:
            ours = entry["main_score"]
            rows.append((name, ours, PUBLISHED_MINILM[name], round(ours - PUBLISHED_MINILM[name], 2)))
    return rows
