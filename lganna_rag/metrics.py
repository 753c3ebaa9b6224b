"""Ranking metrics: nDCG@k, MRR@k and MAP, each implemented once (numpy only).

Ranks are 0-based (0 = ranked first); a query whose relevant document was not found has rank ``inf``.
Two input shapes are served: one relevant document per query (its rank: :func:`answer_ranks` from a
queries x documents score matrix, :func:`rank_in` from a ranked list), and trec_eval-style ``run``/``qrels``
dicts with graded relevance (:func:`ndcg_at_k`, :func:`mean_average_precision`).
"""

from __future__ import annotations

import math
from typing import Hashable, Iterable, Sequence

import numpy as np

#: How :func:`answer_ranks` ranks an answer that ties with other documents.
TIES = ("optimistic", "argsort")


def rank_in(ranking: Sequence[Hashable], wanted: Hashable) -> float:
    """0-based position of ``wanted``'s first occurrence in ``ranking``; ``inf`` when it is absent."""
    return next((float(r) for r, item in enumerate(ranking) if item == wanted), math.inf)


def answer_ranks(scores: np.ndarray, answers: Sequence[int], ties: str = "optimistic") -> np.ndarray:
    """0-based rank of column ``answers[i]`` in row ``i`` of ``scores`` (queries x documents, larger = better).

    ``ties="optimistic"``: only documents scored strictly higher count (the answer wins its ties);
    ``"argsort"``: the answer's position in numpy's default ``argsort`` of ``-scores`` (ties in argsort's order).
    """
    if ties == "optimistic":
        target = scores[np.arange(len(answers)), answers]
        return (scores > target[:, None]).sum(axis=1)
    if ties == "argsort":
        return ((-scores).argsort(axis=1) == np.asarray(answers)[:, None]).argmax(axis=1)
    raise ValueError(f"unknown tie rule {ties!r}; choose one of {TIES}")


def reciprocal_rank(rank: float, k: int = 10) -> float:
    """1 / (rank + 1) for a 0-based ``rank`` below ``k``, else 0."""
    return 1.0 / (rank + 1) if rank < k else 0.0


def mrr_of_ranks(ranks: Iterable[float], k: int = 10) -> float:
    """MRR@k: the mean reciprocal rank of each query's one relevant document (0 for no queries)."""
    rr = [reciprocal_rank(r, k) for r in ranks]
    return float(np.mean(rr)) if rr else 0.0


def mrr_at_k(rankings: Sequence[Sequence[Hashable]], wanted: Sequence[Hashable], k: int = 10) -> float:
    """MRR@k of ``wanted[i]`` in the ranked list ``rankings[i]``."""
    return mrr_of_ranks((rank_in(ids, w) for ids, w in zip(rankings, wanted)), k)


def discounted_gain(rank: float, gain: float = 1.0) -> float:
    """DCG's term for ``gain`` at 0-based ``rank``: gain / log2(rank + 2)."""
    return gain / math.log2(rank + 2)


def dcg_at_k(gains: Sequence[float], k: int = 10) -> float:
    """DCG@k of the gains of a ranking, listed best-ranked first."""
    return sum(discounted_gain(r, g) for r, g in enumerate(gains[:k]) if g > 0)


def query_ndcg(ranked_gains: Sequence[float], relevant_gains: Iterable[float], k: int = 10) -> float:
    """nDCG@k of one query: the DCG of its ranking's gains over the DCG of the ideal order of ``relevant_gains``."""
    ideal = dcg_at_k(sorted((g for g in relevant_gains if g > 0), reverse=True), k)
    return dcg_at_k(ranked_gains, k) / ideal if ideal > 0 else 0.0


def ndcg_of_ranks(ranks: Iterable[float], k: int = 10) -> float:
    """Mean nDCG@k of queries with one relevant document each, at 0-based ``ranks`` (0 for no queries)."""
    values = [discounted_gain(r) if r < k else 0.0 for r in ranks]
    return float(np.mean(values)) if values else 0.0


def trec_order(scores: dict[str, float]) -> list[str]:
    """Document ids by score, best first; ties broken by document id, descending, as trec_eval does."""
    return [doc for doc, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def ndcg_at_k(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], k: int = 10) -> float:
    """Mean nDCG@k over the queries of ``qrels`` with a relevant document (trec_eval gains: the graded score).

    ``run`` maps query ids to ``{doc_id: score}``; a query missing from it scores 0.
    """
    total, n = 0.0, 0
    for qid, rels in qrels.items():
        if any(r > 0 for r in rels.values()):
            n += 1
            total += query_ndcg([rels.get(doc, 0) for doc in trec_order(run.get(qid, {}))], rels.values(), k)
    return total / n if n else 0.0


def average_precision(ranked_relevant: Sequence[bool], n_relevant: int) -> float:
    """AP of one query: the precision at each relevant document's rank, summed, over its ``n_relevant``."""
    hits, total = 0, 0.0
    for r, relevant in enumerate(ranked_relevant):
        if relevant:
            hits += 1
            total += hits / (r + 1)
    return total / n_relevant if n_relevant else 0.0


def mean_average_precision(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]],
                           k: int | None = None) -> float:
    """MAP (@``k`` when given) over the queries of ``qrels`` with a relevant document (relevance > 0, trec_eval)."""
    aps = []
    for qid, rels in qrels.items():
        n_relevant = sum(r > 0 for r in rels.values())
        if n_relevant:
            ranked = trec_order(run.get(qid, {}))[:k]
            aps.append(average_precision([rels.get(doc, 0) > 0 for doc in ranked], n_relevant))
    return float(np.mean(aps)) if aps else 0.0


def bootstrap_lower(differences: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                    seed: int = 0) -> float:
    """One-sided lower confidence bound of the mean of paired per-query ``differences`` (a seeded bootstrap): above
    zero, the gain is more than its sampling noise."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0:
        return 0.0
    rows = np.random.default_rng(seed).integers(0, d.size, size=(resamples, d.size))
    return float(np.quantile(d[rows].mean(axis=1), 1.0 - confidence))
