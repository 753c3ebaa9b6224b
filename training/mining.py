"""Hard-negative mining with an adaptive margin (NV-Retriever's TopK-PercPos) and ablation variants.

All functions are pure. Teacher scores must be on a scale where larger is more relevant and the
positive's score is positive (e.g. fused stage-1 scores in [0, 1] or cosine similarities).

Modes:
- ``adaptive``: keep negatives scoring below ``perc`` x the positive's score (the margin scales with it),
- ``margin``: keep negatives scoring below the positive's score minus a fixed ``margin``,
- ``fixed``: keep negatives scoring below an absolute ``threshold``,
- ``none``: no filter (the k highest-scoring non-positives).
Then the ``k`` hardest (highest-scoring) survivors are returned.
"""

from __future__ import annotations

from typing import Iterable, Sequence

MODES = ("adaptive", "margin", "fixed", "none")


def keep_mask(
    pos_score: float,
    neg_scores: Sequence[float],
    mode: str = "adaptive",
    *,
    perc: float = 0.95,
    margin: float = 0.05,
    threshold: float = 0.7,
) -> list[bool]:
    """Which negatives survive the ambiguity filter (True = usable as a negative)."""
    if mode == "adaptive":
        limit = perc * pos_score
    elif mode == "margin":
        limit = pos_score - margin
    elif mode == "fixed":
        limit = threshold
    elif mode == "none":
        return [True] * len(neg_scores)
    else:
        raise ValueError(f"unknown mining mode {mode!r}; choose one of {MODES}")
    return [s < limit for s in neg_scores]


def mine_negatives(
    candidates: Sequence[str],
    scores: Sequence[float],
    positives: Iterable[str],
    pos_score: float,
    k: int,
    mode: str = "adaptive",
    **params: float,
) -> list[str]:
    """The ``k`` hardest candidates that are not positives and survive :func:`keep_mask`, hardest first."""
    if len(candidates) != len(scores):
        raise ValueError(f"{len(candidates)} candidates but {len(scores)} scores")
    pos = set(positives)
    pairs = [(c, s) for c, s in zip(candidates, scores) if c not in pos]
    mask = keep_mask(pos_score, [s for _, s in pairs], mode, **params)
    kept = sorted((p for p, m in zip(pairs, mask) if m), key=lambda p: -p[1])
    return [c for c, _ in kept[:k]]
