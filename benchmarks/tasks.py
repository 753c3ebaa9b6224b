"""Readers for the shared task data (``$LGANNA_DATA``, layouts in ``MANIFEST.md``) and shared metrics.

Every reader raises :class:`lganna_rag.data.DataFormatError` naming the file and line of a bad row.
"""

from __future__ import annotations

import math
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


def ndcg_at_k(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], k: int = 10) -> float:
    """Mean nDCG@k over the queries of ``qrels`` (trec_eval gains: the graded score; unretrieved queries count 0).

    ``run`` maps query ids to ``{doc_id: score}``; ties are broken by document id, descending, as trec_eval does.
    """
    total = 0.0
    n = 0
    for qid, rels in qrels.items():
        ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
        if not ideal:
            continue
        n += 1
        ranked = sorted(run.get(qid, {}).items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:k]
        dcg = sum(rels.get(doc, 0) / math.log2(rank + 2) for rank, (doc, _) in enumerate(ranked) if rels.get(doc, 0) > 0)
        idcg = sum(rel / math.log2(rank + 2) for rank, rel in enumerate(ideal))
        total += dcg / idcg
    return total / n if n else 0.0
