"""Readers for the shared task data (``$LGANNA_DATA``, layouts in ``MANIFEST.md``); metrics: :mod:`lganna_rag.metrics`.

Every reader raises :class:`lganna_rag.data.DataFormatError` naming the file and line of a bad row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lganna_rag.data import DataFormatError, data_dir, read_jsonl

#: Shared folders of retrieval tasks (BEIR layout).
RETRIEVAL_TASKS = ("SciFact", "ArguAna", "Cranfield", "CACM", "NPL")


@dataclass
class RetrievalData:
    """A BEIR-style retrieval task: documents, the judged queries of one split, and graded qrels."""

    name: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    def document_texts(self) -> tuple[list[str], list[str]]:
        """Document ids and texts (``title + " " + text``, as mteb joins them)."""
        ids = list(self.corpus)
        return ids, [join_title(self.corpus[i]) for i in ids]


def join_title(doc: dict[str, str]) -> str:
    """``title text`` with the title left out when it is empty."""
    title, text = (doc.get("title") or "").strip(), (doc.get("text") or "").strip()
    return f"{title} {text}".strip() if title else text


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Read a ``query-id  corpus-id  score`` TSV (with header) into ``{qid: {doc_id: score}}``."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.rstrip("\n").split("\t")
            if lineno == 1 and parts[0] == "query-id":
                continue
            if not line.strip():
                continue
            if len(parts) != 3:
                raise DataFormatError(f"{path}:{lineno}: expected 3 tab-separated columns, got {len(parts)}")
            try:
                score = int(float(parts[2]))
            except ValueError:
                raise DataFormatError(f"{path}:{lineno}: score {parts[2]!r} is not a number") from None
            qrels.setdefault(parts[0], {})[parts[1]] = score
    return qrels


def load_retrieval(name: str, split: str = "test", root: Path | None = None) -> RetrievalData:
    """Load a retrieval task folder; only the queries judged in ``qrels/<split>.tsv`` are kept."""
    folder = (root or data_dir()) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"no task folder {folder}")
    corpus = {
        str(row["_id"]): {"title": row.get("title") or "", "text": row.get("text") or ""}
        for row in read_jsonl(folder / "corpus.jsonl", required=("_id", "text"))
    }
    qrels = read_qrels(folder / "qrels" / f"{split}.tsv")
    all_queries = {str(row["_id"]): row["text"] for row in read_jsonl(folder / "queries.jsonl", required=("_id", "text"))}
    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise DataFormatError(f"{folder / 'qrels' / f'{split}.tsv'}: query ids {missing[:5]} are not in queries.jsonl")
    queries = {q: all_queries[q] for q in qrels}
    return RetrievalData(name, corpus, queries, qrels)


def load_training_collection(name: str, n_docs: int = 3000, n_queries: int = 200,
                             root: Path | None = None) -> RetrievalData:
    """A retrieval set made from a training file (``train/<name>.jsonl``: query, positive), for choosing settings on
    a collection that is never reported: the distinct positives of the first ``n_docs`` rows are the corpus, the
    questions of ``n_queries`` of those rows (evenly spaced) the queries, each relevant to its own positive."""
    path = (root or data_dir()) / "train" / f"{name}.jsonl"
    rows = list(read_jsonl(path, required=("query", "positive")))[:n_docs]
    if not rows:
        raise DataFormatError(f"{path}: no rows")
    corpus: dict[str, dict[str, str]] = {}
    ids: dict[str, str] = {}
    for row in rows:
        if row["positive"] not in ids:
            ids[row["positive"]] = f"d{len(ids)}"
            corpus[ids[row["positive"]]] = {"title": "", "text": row["positive"]}
    queries, qrels = {}, {}
    for i, row in enumerate(spread(rows, n_queries)):
        queries[f"q{i}"] = row["query"]
        qrels[f"q{i}"] = {ids[row["positive"]]: 1}
    return RetrievalData(f"train:{name}", corpus, queries, qrels)


# ---------------------------------------------------------------------------------------------
# Every shared task: folder -> (MTEB task name or None, our task type, MTEB subset)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SharedTask:
    """One folder of the shared data and how it maps onto MTEB."""

    folder: str
    task_type: str
    mteb_name: str | None = None
    subset: str = "default"
    note: str = ""
    split: str = "test"  # the file scored (``dev``/``validation`` for DEV_TASKS); classifiers always train on ``train``

    @property
    def name(self) -> str:
        """The MTEB task name, or the folder name for tasks MTEB does not have."""
        return self.mteb_name or self.folder

    @property
    def key(self) -> str:
        """The task's name in result files: the folder, ``folder@split`` for a dev-split task."""
        return self.folder if self.split == "test" else f"{self.folder}@{self.split}"


SHARED_TASKS: tuple[SharedTask, ...] = (
    SharedTask("SciFact", "retrieval", "SciFact"),
    SharedTask("ArguAna", "retrieval", "ArguAna"),
    SharedTask("Cranfield", "retrieval", note="classic collection, not in MTEB"),
    SharedTask("CACM", "retrieval", note="classic collection, not in MTEB"),
    SharedTask("NPL", "retrieval", note="classic collection, not in MTEB"),
    SharedTask("TrecQA", "reranking", note="not in MTEB"),
    SharedTask("WikiQA", "reranking", note="not in MTEB"),
    SharedTask("LiveQAMedicalReranking", "reranking", note="not in MTEB"),
    SharedTask("STS12", "sts", "STS12"),
    SharedTask("STS13", "sts", "STS13"),
    SharedTask("STS14", "sts", "STS14"),
    SharedTask("STS15", "sts", "STS15"),
    SharedTask("STS17", "sts", "STS17", subset="en-en"),
    SharedTask("STSBenchmark", "sts", "STSBenchmark"),
    SharedTask("SICK-R", "sts", "SICK-R"),
    SharedTask("BIOSSES", "sts", "BIOSSES"),
    SharedTask("Banking77", "classification", "Banking77Classification"),
    SharedTask("AmazonCounterfactual", "classification", "AmazonCounterfactualClassification", subset="en"),
    SharedTask("TweetSentimentExtraction", "classification", "TweetSentimentExtractionClassification"),
    SharedTask("MassiveIntentClassification", "classification", "MassiveIntentClassification", subset="en",
               note="classifier trained on MASSIVE validation (MTEB: train)"),
    SharedTask("MassiveScenarioClassification", "classification", "MassiveScenarioClassification", subset="en",
               note="classifier trained on MASSIVE validation (MTEB: train)"),
    SharedTask("Clinc150", "classification", note="not in MTEB"),
    SharedTask("TRECQuestionClassification", "classification", note="not in MTEB"),
    SharedTask("SST2", "classification", note="not in MTEB"),
    SharedTask("TwentyNewsgroupsClustering", "clustering", "TwentyNewsgroupsClustering",
               note="one set of 7,532 subjects; MTEB samples 10 sets"),
    SharedTask("Banking77Clustering", "clustering", note="derived, not in MTEB"),
    SharedTask("StackOverflowTitleClustering", "clustering", note="not in MTEB"),
    SharedTask("BiomedicalTitleClustering", "clustering", note="not in MTEB"),
    SharedTask("TwitterSemEval2015", "pair_classification", "TwitterSemEval2015",
               note="official 838-pair test; MTEB has 16,777 pairs"),
    SharedTask("MSRP", "pair_classification", note="not in MTEB"),
    SharedTask("RQEMedicalPairs", "pair_classification", note="not in MTEB"),
)


#: The evaluation tasks whose data has a dev or validation split, scored on that split: a model-selection suite
#: that never reads a test split (``lganna-rag bench quality --dev``). TwitterSemEval2015's dev split is left out
#: because it is a training source (``train/pit2015_dev.jsonl``); the retrieval sets have no dev split.
DEV_TASKS: tuple[SharedTask, ...] = (
    SharedTask("WikiQA", "reranking", split="dev", note="WikiQA dev, 122 queries"),
    SharedTask("STSBenchmark", "sts", "STSBenchmark", split="dev"),
    SharedTask("AmazonCounterfactual", "classification", "AmazonCounterfactualClassification", subset="en",
               split="validation"),
    SharedTask("SST2", "classification", split="validation", note="SST-2 dev"),
    SharedTask("Clinc150", "classification", split="validation", note="CLINC150 validation"),
)


def shared_task(name: str) -> SharedTask:
    """Look a shared task up by folder or MTEB name (case-insensitive), or a dev task by ``folder@split``."""
    for task in (*SHARED_TASKS, *DEV_TASKS):
        if name.lower() in (task.key.lower(), task.name.lower() if task.split == "test" else task.key.lower()):
            return task
    known = ", ".join(t.key for t in (*SHARED_TASKS, *DEV_TASKS))
    raise KeyError(f"unknown task {name!r}; known: {known}")


# ---------------------------------------------------------------------------------------------
# Readers per layout; ``limit`` keeps a deterministic prefix (for --quick runs)
# ---------------------------------------------------------------------------------------------
def spread(items: list, limit: int | None) -> list:
    """``limit`` evenly spaced items (all of them when ``limit`` is None): a deterministic sample
    that keeps every part of label-sorted files."""
    if limit is None or len(items) <= limit:
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def _rows(path: Path, required: tuple[str, ...], limit: int | None = None) -> list[dict]:
    rows = list(read_jsonl(path, required=required))
    if not rows:
        raise DataFormatError(f"{path}: no rows")
    return spread(rows, limit)


def load_pairs(folder: Path, label_key: str, limit: int | None = None, split: str = "test") -> dict[str, list]:
    """STS (``score``) or pair-classification (``label``) pairs from ``<split>.jsonl``."""
    rows = _rows(folder / f"{split}.jsonl", ("sentence1", "sentence2", label_key), limit)
    for lineno, row in enumerate(rows, 1):
        if not isinstance(row[label_key], (int, float)):
            raise DataFormatError(f"{folder / f'{split}.jsonl'}:{lineno}: {label_key} must be a number, got {row[label_key]!r}")
    return {k: [r[k] for r in rows] for k in ("sentence1", "sentence2", label_key)}


def load_classification(folder: Path, limit: int | None = None, split: str = "test") -> dict[str, dict[str, list]]:
    """``train`` and ``test`` splits of ``{"text", "label"}`` rows, ``test`` read from ``<split>.jsonl`` (labels kept
    as given; ``limit`` caps test, 5x that train)."""
    out = {}
    for name, file in (("train", "train"), ("test", split)):
        rows = _rows(folder / f"{file}.jsonl", ("text", "label"), limit if name == "test" else (limit and 5 * limit))
        out[name] = {"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]}
    return out


def load_clustering(folder: Path, limit: int | None = None) -> dict[str, list]:
    """Clustering sets: each row ``{"sentences": [...], "labels": [...]}`` (``limit`` cuts each set)."""
    rows = _rows(folder / "test.jsonl", ("sentences", "labels"))
    for lineno, row in enumerate(rows, 1):
        if len(row["sentences"]) != len(row["labels"]):
            raise DataFormatError(f"{folder / 'test.jsonl'}:{lineno}: {len(row['sentences'])} sentences but {len(row['labels'])} labels")
    return {
        "sentences": [spread(r["sentences"], limit) for r in rows],
        "labels": [[str(x) for x in spread(r["labels"], limit)] for r in rows],
    }


def load_reranking(folder: Path, limit: int | None = None, split: str = "test") -> RetrievalData:
    """Reranking rows ``{"query", "positive": [...], "negative": [...]}`` of ``<split>.jsonl`` as a retrieval task
    over each query's candidates."""
    rows = _rows(folder / f"{split}.jsonl", ("query", "positive", "negative"), limit)
    corpus: dict[str, dict[str, str]] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for i, row in enumerate(rows):
        qid = f"q{i}"
        queries[qid] = row["query"]
        qrels[qid] = {}
        for label, key in ((1, "positive"), (0, "negative")):
            for j, text in enumerate(row[key]):
                doc = f"{qid}-{key[0]}{j}"
                corpus[doc] = {"title": "", "text": text}
                qrels[qid][doc] = label
    return RetrievalData(folder.name, corpus, queries, qrels)


def limit_retrieval(data: RetrievalData, n_queries: int, n_docs: int) -> RetrievalData:
    """A deterministic small version: the first ``n_queries`` queries, their judged docs and the first ``n_docs`` others."""
    qids = list(data.queries)[:n_queries]
    keep = {d for q in qids for d in data.qrels[q]} | set(list(data.corpus)[:n_docs])
    return RetrievalData(
        data.name,
        {d: v for d, v in data.corpus.items() if d in keep},
        {q: data.queries[q] for q in qids},
        {q: {d: s for d, s in data.qrels[q].items() if d in keep} for q in qids},
    )
