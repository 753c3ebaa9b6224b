"""Training examples (``$LGANNA_DATA/train`` or the user's JSONL), the test-leakage check, in-context examples.

Classification files become pairs of texts that share a label.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from lganna_rag.data import DataFormatError, data_dir, read_jsonl
from lganna_rag.prompts import SYMMETRIC_TASK_TYPES, Task, get_task


@dataclass(frozen=True)
class Example:
    """One training pair: ``query`` (gets the instruction), ``positive`` (a document), given negatives."""

    source: str
    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    label: str | None = None


@dataclass(frozen=True)
class Source:
    """A training file and the task its pairs teach."""

    file: str
    task: Task
    kind: str = "pairs"  # pairs | scored_pairs | labels
    symmetric: bool = False  # both sides are the same kind of text (paraphrase, STS, classification)
    path: str | None = None  # the user's own JSONL file; None: ``$LGANNA_DATA/train/<file>``

    @property
    def name(self) -> str:
        """Short name of the source (file name without ``.jsonl``)."""
        return Path(self.file).name.removesuffix(".jsonl")

    def location(self, root: Path | None = None) -> Path:
        """Where the rows are read from."""
        return Path(self.path) if self.path else (root or data_dir()) / "train" / self.file


def _t(name: str, instruction: str, task_type: str) -> Task:
    return Task(name, instruction, task_type=task_type)


SOURCES: tuple[Source, ...] = (
    Source("squad_du.jsonl", _t("squad", "Given a question, retrieve Wikipedia sentences that answer the question", "retrieval")),
    Source("medquad.jsonl", _t("medquad", "Given a consumer health question, retrieve passages that answer it", "retrieval")),
    Source("covidqa.jsonl", _t("covidqa", "Given a question about COVID-19, retrieve passages that answer it", "retrieval")),
    Source("pubmedqa.jsonl", _t("pubmedqa", "Given a biomedical research question, retrieve abstracts that answer it", "retrieval")),
    Source("scifact_train.jsonl", get_task("SciFact")),
    Source("wikiqa_train.jsonl", get_task("WikiQA")),
    Source("trecqa.jsonl", get_task("TrecQA")),
    Source("reuters21578.jsonl", _t("reuters", "Given a news headline, retrieve the news story", "retrieval")),
    Source("news20_train.jsonl", _t("news20", "Given the subject line of a newsgroup post, retrieve the post", "retrieval")),
    Source("agnews.jsonl", _t("agnews", "Given a news title, retrieve the news article summary", "retrieval")),
    Source("mqp.jsonl", _t("mqp", "Given a patient question, retrieve questions with the same intent", "pair_classification"), symmetric=True),
    Source("rqe_train.jsonl", get_task("RQEMedicalPairs"), symmetric=True),
    Source("msrp.jsonl", get_task("MSRP"), symmetric=True),
    Source("pit2015_dev.jsonl", get_task("TwitterSemEval2015"), symmetric=True),
    Source("stsb.jsonl", get_task("sts"), kind="scored_pairs", symmetric=True),
    Source("banking77.jsonl", get_task("Banking77Classification"), kind="labels", symmetric=True),
)


def source(spec: str | dict[str, str]) -> Source:
    """A shared source by file name (``.jsonl`` optional), or the user's JSONL (rows: query, positive, optional
    negatives): a path or ``{"path", "task", "instruction", "symmetric", "name"}`` (instruction: ``task``'s)."""
    if isinstance(spec, str) and "/" not in spec and not Path(spec).is_file():
        for s in SOURCES:
            if s.file == spec or s.file == f"{spec}.jsonl":
                return s
        raise KeyError(f"unknown training source {spec!r}; known: {', '.join(s.file for s in SOURCES)}")
    spec = {"path": spec} if isinstance(spec, str) else dict(spec)
    unknown = sorted(set(spec) - {"path", "task", "instruction", "symmetric", "name"})
    if unknown or "path" not in spec:
        raise ValueError(f"a data source needs 'path' (and optional task, instruction, symmetric, name); got {sorted(spec)}")
    path = Path(spec["path"]).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"training file {path} does not exist")
    base = get_task(spec.get("task") or "retrieval")
    name = spec.get("name") or path.name.removesuffix(".jsonl")
    task = Task(name, spec.get("instruction") or base.instruction, task_type=base.task_type)
    symmetric = bool(spec.get("symmetric", base.task_type in SYMMETRIC_TASK_TYPES))
    return Source(f"{name}.jsonl", task, "pairs", symmetric, str(path))


def load_examples(src: Source, root: Path | None = None, seed: int = 0, min_score: float = 4.0) -> list[Example]:
    """Read one source file into examples (label files: each text paired with another text of its label)."""
    path, name = src.location(root), src.name
    if src.kind == "pairs":
        out = []
        for row in read_jsonl(path, required=("query", "positive")):
            negs = row.get("negatives") or []
            if not isinstance(negs, list) or not all(isinstance(n, str) for n in negs):
                raise DataFormatError(f"{path}: 'negatives' must be a list of strings (query {row['query'][:60]!r})")
            out.append(Example(name, row["query"], row["positive"], tuple(negs), row.get("label")))
        return out
    if src.kind == "scored_pairs":
        rows = read_jsonl(path, required=("sentence1", "sentence2", "score"))
        return [Example(name, r["sentence1"], r["sentence2"]) for r in rows if float(r["score"]) >= min_score]
    if src.kind == "labels":
        by_label: dict[str, list[str]] = defaultdict(list)
        for row in read_jsonl(path, required=("text", "label")):
            by_label[str(row["label"])].append(row["text"])
        rng = random.Random(seed)
        out = []
        for label, texts in sorted(by_label.items()):  # a label with one text pairs it with itself: skipped
            partners = texts[1:] + texts[:1]
            rng.shuffle(partners)
            for text, partner in zip(texts, partners):
                if text != partner:
                    out.append(Example(name, text, partner, (), label))
        return out
    raise ValueError(f"unknown source kind {src.kind!r}")


class LeakageError(ValueError):
    """A training text equals a text of an evaluation test set."""


def normalise(text: str) -> str:
    """Lower-case, whitespace-collapsed form used to compare texts."""
    return re.sub(r"\s+", " ", text).strip().lower()


#: Row keys that hold labels or provenance, not text.
_NOT_TEXT = frozenset({"label", "labels", "label_text", "label_fine", "id", "_id", "source", "split", "score", "qtype", "slurp_id"})


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str) and value.strip():
        yield value
    elif isinstance(value, dict):
        yield from (s for k, v in value.items() if k not in _NOT_TEXT for s in _strings(v))
    elif isinstance(value, list):
        yield from (s for v in value for s in _strings(v))


def evaluation_texts(root: Path | None = None) -> dict[str, str]:
    """Normalised evaluation texts (retrieval queries judged in ``qrels/test.tsv``, every string of a
    ``test.jsonl``; corpora are shared, as in BEIR) -> where each comes from."""
    root = root or data_dir()
    tests: dict[str, str] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "train"):
        qrels = folder / "qrels" / "test.tsv"
        if qrels.is_file():
            ids = {line.split("\t")[0] for line in qrels.read_text(encoding="utf-8").splitlines()[1:] if line.strip()}
            for row in read_jsonl(folder / "queries.jsonl"):
                if str(row["_id"]) in ids:
                    tests.setdefault(normalise(row["text"]), f"{folder.name} test query {row['_id']}")
        for test_file in sorted(folder.glob("test.jsonl")):
            for lineno, row in enumerate(read_jsonl(test_file), 1):
                for text in _strings(row):
                    tests.setdefault(normalise(text), f"{test_file.relative_to(root)}:{lineno}")
    return tests


def check_leakage(sources: Iterable[Source], root: Path | None = None) -> int:
    """Raise :class:`LeakageError` naming file and line if a training text equals an evaluation text (see
    :func:`evaluation_texts`); else the number of rows checked."""
    root = root or data_dir()
    tests = evaluation_texts(root)
    checked = 0
    for src in sources:
        path = src.location(root)
        for lineno, row in enumerate(read_jsonl(path), 1):
            checked += 1
            for text in _strings(row):
                if (where := tests.get(normalise(text))) is not None:
                    raise LeakageError(f"{path}:{lineno}: training text {text[:80]!r} equals an evaluation text "
                                       f"({where}); remove the row before training")
    return checked


@dataclass
class ExamplePool:
    """(query, positive) pairs per source, for sampling in-context examples from the same task."""

    by_source: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @classmethod
    def from_examples(cls, examples: Iterable[Example], max_chars: int = 300) -> "ExamplePool":
        """Keep short pairs only (examples share the model's context with the query)."""
        pool: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for ex in examples:
            if len(ex.query) + len(ex.positive) <= max_chars:
                pool[ex.source].append((ex.query, ex.positive))
        return cls(dict(pool))

    def sample(self, example: Example, k: int, rng: random.Random) -> list[tuple[str, str]]:
        """Up to ``k`` pairs from ``example``'s source, never ``example`` itself."""
        candidates = self.by_source.get(example.source, [])
        if k <= 0 or len(candidates) < 2:
            return []
        draw = rng.sample(range(len(candidates)), min(len(candidates), k + 1))
        return [candidates[i] for i in draw if candidates[i][0] != example.query][:k]


def icl_count(rng: random.Random, max_examples: int, p_zero: float = 0.5) -> int:
    """How many in-context examples a training query gets: 0 with probability ``p_zero``, else 1..max."""
    if max_examples <= 0 or rng.random() < p_zero:
        return 0
    return rng.randint(1, max_examples)


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically (temporary file + rename): a reader in another rank never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)
