"""Teacher pipeline: stage 1 candidates (BM25 + dense retriever), stage 2 reranker, soft labels. Cached on disk.

For each training query, candidates come from the documents of the same source: the top
``n_candidates`` of BM25 (bm25s) and of a dense retriever (all-MiniLM-L6-v2 by default), merged.
A reranker then scores every candidate. Offline no cross-encoder exists here, so the default stage 2
is :class:`FusionReranker`, a calibrated fusion of the stage-1 scores; any sentence-transformers
``CrossEncoder`` directory can be used instead (:class:`CrossEncoderReranker`). The scores are
turned into soft labels by a temperature softmax over each query's candidates (see
:func:`lganna_rag.training.losses.teacher_distribution`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from .data import Example, write_json

logger = logging.getLogger(__name__)


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


class Reranker(Protocol):
    """Stage 2: scores (query, document) pairs; larger is more relevant."""

    name: str

    def score(self, query: str, docs: Sequence[str], stage1: dict[str, np.ndarray]) -> np.ndarray:
        """Scores for ``docs``; ``stage1`` holds the stage-1 ``bm25`` and ``dense`` scores of the same docs."""
        ...


class FusionReranker:
    """Calibrated fusion of stage 1: ``w * dense_cosine + (1 - w) * bm25 / max_bm25`` (both in [0, 1])."""

    def __init__(self, dense_weight: float = 0.7) -> None:
        """``dense_weight`` is the weight of the dense cosine; BM25 is divided by the query's best BM25 score."""
        self.dense_weight = dense_weight
        self.name = f"fusion(dense={dense_weight:g}, bm25={1 - dense_weight:g})"

    def score(self, query: str, docs: Sequence[str], stage1: dict[str, np.ndarray]) -> np.ndarray:
        """Fused scores of the candidates."""
        bm25 = stage1["bm25"]
        top = bm25.max() if bm25.size and bm25.max() > 0 else 1.0
        return self.dense_weight * np.clip(stage1["dense"], 0, 1) + (1 - self.dense_weight) * bm25 / top


class CrossEncoderReranker:
    """A sentence-transformers ``CrossEncoder`` from a local directory, scores squashed to [0, 1] by a sigmoid."""

    def __init__(self, path: str) -> None:
        """Load the cross-encoder (safetensors only, no remote code)."""
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(path, trust_remote_code=False)
        self.name = f"cross-encoder({path})"

    def score(self, query: str, docs: Sequence[str], stage1: dict[str, np.ndarray]) -> np.ndarray:
        """Cross-encoder relevance of each candidate."""
        logits = np.asarray(self.model.predict([(query, d) for d in docs], show_progress_bar=False), dtype=np.float64)
        return 1 / (1 + np.exp(-logits)) if logits.min() < 0 or logits.max() > 1 else logits


def make_reranker(cfg: TeacherConfig) -> Reranker:
    """The configured stage-2 reranker."""
    if cfg.reranker == "fusion":
        return FusionReranker(cfg.fusion_dense_weight)
    if cfg.reranker.startswith("cross-encoder:"):
        return CrossEncoderReranker(cfg.reranker.split(":", 1)[1])
    raise ValueError(f"unknown reranker {cfg.reranker!r}; use 'fusion' or 'cross-encoder:<directory>'")


def _bm25_scores(docs: list[str], queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(docs, stopwords="en", show_progress=False), show_progress=False)
    ids, scores = retriever.retrieve(bm25s.tokenize(queries, stopwords="en", show_progress=False),
                                     k=min(k, len(docs)), show_progress=False, n_threads=1)
    return np.asarray(ids), np.asarray(scores)


def _fingerprint(cfg: TeacherConfig, examples: Sequence[Example]) -> str:
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    for ex in examples:
        h.update(ex.source.encode())
        h.update(ex.query.encode())
        h.update(ex.positive.encode())
    return h.hexdigest()[:16]


def build_teacher_labels(
    examples: Sequence[Example],
    docs: list[str],
    cfg: TeacherConfig,
    cache_dir: Path | None = None,
    dense_encoder: Any = None,
) -> tuple[list[TeacherRecord], np.ndarray, np.ndarray, str]:
    """Stage 1 + stage 2 for ``examples`` over the document pool ``docs`` (each positive must be in it).

    Returns the records, the teacher's query and document embeddings (reused for distillation) and
    the reranker's name. Results are cached under ``cache_dir`` by a fingerprint of config and data.
    """
    key = _fingerprint(cfg, examples) + hashlib.sha256("\x00".join(docs).encode()).hexdigest()[:8]
    if cache_dir is not None and (cache_dir / f"{key}.json").is_file():
        meta = json.loads((cache_dir / f"{key}.json").read_text())
        arrays = np.load(cache_dir / f"{key}.npz", allow_pickle=False)
        return [TeacherRecord(**r) for r in meta["records"]], arrays["queries"], arrays["docs"], meta["reranker"]

    from lganna_rag import LGAnnaEncoder

    doc_index = {d: i for i, d in enumerate(docs)}
    missing = [ex.positive[:60] for ex in examples if ex.positive not in doc_index]
    if missing:
        raise ValueError(f"{len(missing)} positives are not in the document pool, e.g. {missing[0]!r}")
    encoder = dense_encoder or LGAnnaEncoder.from_pretrained(cfg.dense, max_length=cfg.max_length)
    queries = [ex.query for ex in examples]
    logger.info("teacher: dense-encoding %d queries and %d documents with %s", len(queries), len(docs), cfg.dense)
    q_vec = encoder.encode_queries(queries, batch_size=cfg.batch_size, show_progress_bar=True)
    d_vec = encoder.encode_documents(docs, batch_size=cfg.batch_size, show_progress_bar=True)
    reranker = make_reranker(cfg)

    # Candidates are searched within each source's own documents.
    by_source: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_source.setdefault(ex.source, []).append(i)
    records: list[TeacherRecord | None] = [None] * len(examples)
    for src, idx in by_source.items():
        pool = sorted({doc_index[examples[i].positive] for i in idx} | {doc_index[n] for i in idx for n in examples[i].negatives if n in doc_index})
        pool_docs = [docs[j] for j in pool]
        local = {j: n for n, j in enumerate(pool)}
        k = min(cfg.n_candidates, len(pool))
        bm_ids, bm_scores = _bm25_scores(pool_docs, [examples[i].query for i in idx], k)
        dense = q_vec[idx] @ d_vec[pool].T
        for row, i in enumerate(idx):
            ex = examples[i]
            dense_top = np.argsort(-dense[row])[:k]
            cand_local = list(dict.fromkeys([*bm_ids[row].tolist(), *dense_top.tolist(), local[doc_index[ex.positive]]]))
            bm_map = dict(zip(bm_ids[row].tolist(), bm_scores[row].tolist()))
            stage1 = {"bm25": np.array([bm_map.get(c, 0.0) for c in cand_local]), "dense": dense[row, cand_local]}
            scores = reranker.score(ex.query, [pool_docs[c] for c in cand_local], stage1)
            cand = [pool[c] for c in cand_local]
            pos = doc_index[ex.positive]
            records[i] = TeacherRecord(cand, [round(float(s), 5) for s in scores], pos, float(scores[cand.index(pos)]))
    done = [r for r in records if r is not None]
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Atomic writes: under torchrun every rank computes the labels and writes the same cache.
        tmp = cache_dir / f"{key}.{os.getpid()}.tmp.npz"
        np.savez(tmp, queries=q_vec, docs=d_vec)
        os.replace(tmp, cache_dir / f"{key}.npz")
        write_json(cache_dir / f"{key}.json", {"reranker": reranker.name, "config": asdict(cfg),
                                               "records": [asdict(r) for r in done]})
    return done, q_vec, d_vec, reranker.name
