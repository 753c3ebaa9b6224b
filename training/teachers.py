"""Teacher labels: stage 1 candidates (BM25 + a dense retriever), stage 2 reranker scores; cached on disk.

Each query's candidates are the top ``n_candidates`` of BM25 (bm25s) and of the dense model (all-MiniLM-L6-v2
by default) among its own source's documents. Stage 2 (:func:`lganna_rag.objectives.make_reranker`, shared with
``adapt``) is a local cross-encoder directory when given, else (no cross-encoder offline) a calibrated fusion of the
stage-1 scores.

Mining filters each query's candidates by the teacher's scores (larger = more relevant, the positive's > 0) with
:func:`lganna_rag.objectives.keep_mask`: ``adaptive`` keeps negatives below ``perc`` x the positive's score
(NV-Retriever's TopK-PercPos; the library's ``mine_hard_negatives(relative_margin=1 - perc)`` has the rule but scores
with one dense model, not this teacher), ``margin`` below the positive's score minus ``margin``, ``fixed`` below
``threshold``, ``none`` keeps all.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Hashable, Iterable, Sequence, TypeVar

import bm25s
import numpy as np

from lganna_rag import LGAnnaEncoder
from lganna_rag.objectives import MODES, Scorer, keep_mask, make_reranker

from .data import Example, write_json

__all__ = ["MODES", "Scorer", "TeacherConfig", "TeacherRecord", "build_teacher_labels", "keep_mask", "make_reranker",
           "mine_negatives"]
logger = logging.getLogger(__name__)
C = TypeVar("C", bound=Hashable)


@dataclass
class TeacherConfig:
    """Which teachers produce the labels."""

    dense: str = "minilm"
    n_candidates: int = 20
    reranker: str = "fusion"  # "fusion" or "cross-encoder:<local directory>"
    fusion_dense_weight: float = 0.7
    batch_size: int = 64
    max_length: int = 256


@dataclass
class TeacherRecord:
    """Stage-2 scores of one query's candidates (document indices into the source's pool)."""

    candidates: list[int]
    scores: list[float]
    positive: int
    positive_score: float


def build_teacher_labels(examples: Sequence[Example], docs: list[str], cfg: TeacherConfig,
                         cache_dir: Path | None = None) -> tuple[list[TeacherRecord], str]:
    """Stage 1 + stage 2 for ``examples`` over ``docs`` (every positive and given negative): the records and the
    reranker's name, cached under ``cache_dir`` by a fingerprint of config and data."""
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    for ex in examples:
        h.update(f"{ex.source}{ex.query}{ex.positive}".encode())
    key = h.hexdigest()[:16] + hashlib.sha256("\x00".join(docs).encode()).hexdigest()[:8]
    cache = cache_dir / f"{key}.json" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        meta = json.loads(cache.read_text())
        return [TeacherRecord(**r) for r in meta["records"]], meta["reranker"]

    doc_index = {d: i for i, d in enumerate(docs)}
    encoder = LGAnnaEncoder.from_pretrained(cfg.dense, max_length=cfg.max_length, precision="fp32")  # exact labels
    queries = [ex.query for ex in examples]
    logger.info("teacher: dense-encoding %d queries and %d documents with %s", len(queries), len(docs), cfg.dense)
    q_vec = encoder.encode_queries(queries, batch_size=cfg.batch_size, show_progress_bar=True)
    d_vec = encoder.encode_documents(docs, batch_size=cfg.batch_size, show_progress_bar=True)
    reranker, score = make_reranker(cfg.reranker, cfg.fusion_dense_weight)
    records: dict[int, TeacherRecord] = {}
    for src in dict.fromkeys(ex.source for ex in examples):  # candidates come from the source's own documents
        idx = [i for i, ex in enumerate(examples) if ex.source == src]
        pool = sorted({doc_index[t] for i in idx for t in (examples[i].positive, *examples[i].negatives)})
        pool_docs = [docs[j] for j in pool]
        local = {j: n for n, j in enumerate(pool)}
        k = min(cfg.n_candidates, len(pool))
        bm25 = bm25s.BM25()
        bm25.index(bm25s.tokenize(pool_docs, stopwords="en", show_progress=False), show_progress=False)
        bm_ids, bm_scores = bm25.retrieve(bm25s.tokenize([examples[i].query for i in idx], stopwords="en",
                                                         show_progress=False), k=k, show_progress=False, n_threads=1)
        dense = q_vec[idx] @ d_vec[pool].T
        for row, i in enumerate(idx):
            pos = doc_index[examples[i].positive]
            dense_top = np.argsort(-dense[row])[:k]
            cand_local = list(dict.fromkeys([*bm_ids[row].tolist(), *dense_top.tolist(), local[pos]]))
            bm_map = dict(zip(bm_ids[row].tolist(), bm_scores[row].tolist()))
            stage1 = {"bm25": np.array([bm_map.get(c, 0.0) for c in cand_local]), "dense": dense[row, cand_local]}
            scores = score(examples[i].query, [pool_docs[c] for c in cand_local], stage1)
            cand = [pool[c] for c in cand_local]
            records[i] = TeacherRecord(cand, [round(float(s), 5) for s in scores], pos, float(scores[cand.index(pos)]))
    done = [records[i] for i in range(len(examples))]
    if cache is not None:  # atomic: under torchrun every rank computes the labels and writes the same cache
        write_json(cache, {"reranker": reranker, "config": asdict(cfg), "records": [asdict(r) for r in done]})
    return done, reranker


def mine_negatives(candidates: Sequence[C], scores: Sequence[float], positives: Iterable[C], pos_score: float,
                   k: int, mode: str = "adaptive", **params: float) -> list[C]:
    """The ``k`` hardest candidates that are not positives and survive :func:`keep_mask`, hardest first."""
    if len(candidates) != len(scores):
        raise ValueError(f"{len(candidates)} candidates but {len(scores)} scores")
    pos = set(positives)
    pairs = [(c, s) for c, s in zip(candidates, scores) if c not in pos]
    mask = keep_mask(pos_score, [s for _, s in pairs], mode, **params)
    kept = sorted((p for p, m in zip(pairs, mask) if m), key=lambda p: -p[1])
    return [c for c, _ in kept[:k]]
