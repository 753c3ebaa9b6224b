"""Hard-negative mining on the teacher's scores (larger = more relevant, the positive's score > 0); pure functions.

Modes: ``adaptive`` keeps negatives scoring below ``perc`` x the positive's score (NV-Retriever's TopK-PercPos),
``margin`` below the positive's score minus ``margin``, ``fixed`` below ``threshold``, ``none`` keeps all.
"""

from __future__ import annotations

from typing import Iterable, Sequence

MODES = ("adaptive", "margin", "fixed", "none")


def keep_mask(pos_score: float, neg_scores: Sequence[float], mode: str = "adaptive", *, perc: float = 0.95,
              margin: float = 0.05, threshold: float = 0.7) -> list[bool]:
    """Which negatives survive the ambiguity filter (True = usable as a negative)."""
    if mode == "none":
        return [True] * len(neg_scores)
    limits = {"adaptive": perc * pos_score, "margin": pos_score - margin, "fixed": threshold}
    if mode not in limits:
        raise ValueError(f"unknown mining mode {mode!r}; choose one of {MODES}")
    return [s < limits[mode] for s in neg_scores]


def mine_negatives(candidates: Sequence[str], scores: Sequence[float], positives: Iterable[str], pos_score: float,
                   k: int, mode: str = "adaptive", **params: float) -> list[str]:
    """The ``k`` hardest candidates that are not positives and survive :func:`keep_mask`, hardest first."""
    if len(candidates) != len(scores):
        raise ValueError(f"{len(candidates)} candidates but {len(scores)} scores")
    pos = set(positives)
    pairs = [(c, s) for c, s in zip(candidates, scores) if c not in pos]
    mask = keep_mask(pos_score, [s for _, s in pairs], mode, **params)
    kept = sorted((p for p, m in zip(pairs, mask) if m), key=lambda p: -p[1])
    return [c for c, _ in kept[:k]]
