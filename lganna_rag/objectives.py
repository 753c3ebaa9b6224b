"""The LG-ANNA recipe's math, shared by the training engine (:mod:`lganna_rag.training`) and ``adapt``.

The teacher's stage 2 (:func:`make_reranker`: the dense + BM25 score fusion, or a local cross-encoder), the
adaptive-margin filter (:func:`keep_mask`) and the loss terms (:func:`info_nce`, :func:`group_scores`,
:func:`teacher_distribution`, :func:`soft_label_kl`, :func:`self_distillation`). Importing this module is
cheap: numpy only; torch (and, for a cross-encoder, transformers) are imported by the functions that use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Stage 2: scores of (query, candidate texts, their stage-1 ``bm25``/``dense`` scores), larger = more relevant.
Scorer = Callable[[str, Sequence[str], dict[str, np.ndarray]], np.ndarray]
#: The negative filters of :func:`keep_mask`.
MODES = ("adaptive", "margin", "fixed", "none")


# ------------------------------------------------------------------------------------------ the teacher
def fusion_scores(dense: np.ndarray, bm25: np.ndarray, dense_weight: float = 0.7) -> np.ndarray:
    """w x dense cosine (clipped to [0, 1]) + (1 - w) x BM25 / the query's best BM25: one query's candidates."""
    top = bm25.max() if bm25.size and bm25.max() > 0 else 1.0
    return dense_weight * np.clip(dense, 0, 1) + (1 - dense_weight) * bm25 / top


def cross_encoder_scorer(path: str, batch_size: int = 32) -> Scorer:
    """A local cross-encoder directory (a one-label sequence classifier, no remote code) as a scorer: the
    sigmoid of its logit, as sentence-transformers' ``CrossEncoder.predict`` gives for one label."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=False).eval()
    if model.config.num_labels != 1:
        raise ValueError(f"{path}: a cross-encoder teacher has one label, this model has {model.config.num_labels}")
    limit = min(tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", 512))

    def cross(query: str, docs: Sequence[str], stage1: dict[str, np.ndarray]) -> np.ndarray:
        logits = []
        with torch.inference_mode():
            for i in range(0, len(docs), batch_size):
                part = list(docs[i:i + batch_size])
                batch = tokenizer([query] * len(part), part, padding=True, truncation=True, max_length=limit,
                                  return_tensors="pt")
                logits.append(model(**batch).logits[:, 0].float())
        return torch.sigmoid(torch.cat(logits)).double().numpy() if logits else np.zeros(0)

    return cross


def make_reranker(reranker: str = "fusion", dense_weight: float = 0.7) -> tuple[str, Scorer]:
    """The teacher's stage 2 (``fusion`` or ``cross-encoder:<local directory>``): its name and its scorer."""
    if reranker == "fusion":
        def fuse(query: str, docs: Sequence[str], stage1: dict[str, np.ndarray]) -> np.ndarray:
            return fusion_scores(stage1["dense"], stage1["bm25"], dense_weight)

        return f"fusion(dense={dense_weight:g}, bm25={1 - dense_weight:g})", fuse
    if reranker.startswith("cross-encoder:"):
        path = reranker.split(":", 1)[1]
        return f"cross-encoder({path})", cross_encoder_scorer(path)
    raise ValueError(f"unknown reranker {reranker!r}; use 'fusion' or 'cross-encoder:<directory>'")


def keep_mask(pos_score: float, neg_scores: Sequence[float], mode: str = "adaptive", *, perc: float = 0.95,
              margin: float = 0.05, threshold: float = 0.7) -> list[bool]:
    """Which negatives survive the ambiguity filter (True = usable as a negative).

    ``adaptive``: below ``perc`` x the positive's score (NV-Retriever's TopK-PercPos); ``margin``: below the
    positive's score minus ``margin``; ``fixed``: below ``threshold``; ``none``: all."""
    if mode == "none":
        return [True] * len(neg_scores)
    limits = {"adaptive": perc * pos_score, "margin": pos_score - margin, "fixed": threshold}
    if mode not in limits:
        raise ValueError(f"unknown mining mode {mode!r}; choose one of {MODES}")
    return [s < limits[mode] for s in neg_scores]


# ------------------------------------------------------------------------------------------ the loss terms
def info_nce(queries: torch.Tensor, docs: torch.Tensor, group_size: int, temperature: float = 0.05,
             offset: int = 0) -> torch.Tensor:
    """Contrastive loss: query i's positive is ``docs`` row ``offset + i*group_size`` (its negatives follow);
    every other row of ``docs`` (other groups, other devices) is a negative for it too."""
    import torch
    import torch.nn.functional as F

    if docs.shape[0] < offset + queries.shape[0] * group_size:
        raise ValueError(f"expected at least {offset + queries.shape[0] * group_size} docs, got {docs.shape[0]}")
    logits = queries @ docs.T / temperature
    target = offset + torch.arange(queries.shape[0], device=queries.device) * group_size
    return F.cross_entropy(logits, target)


def group_scores(queries: torch.Tensor, docs: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B, group_size) similarities of each query with its own candidate group (positive first)."""
    import torch

    return torch.einsum("bd,bgd->bg", queries, docs.view(queries.shape[0], group_size, -1))


def teacher_distribution(scores: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Teacher soft labels: a temperature softmax over each row of teacher scores."""
    import torch

    return torch.softmax(scores / temperature, dim=-1)


def soft_label_kl(student_scores: torch.Tensor, teacher_probs: torch.Tensor,
                  temperature: float = 0.05) -> torch.Tensor:
    """KL(teacher || student) over each query's candidates; student probabilities are softmax(scores / temperature)."""
    import torch.nn.functional as F

    log_student = F.log_softmax(student_scores / temperature, dim=-1)
    return F.kl_div(log_student, teacher_probs, reduction="batchmean")


def self_distillation(student: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(student row, base row): how far training moved the texts from the base model's vectors."""
    import torch.nn.functional as F

    return (1 - F.cosine_similarity(student, base.to(student.dtype), dim=-1)).mean()
