"""Training losses: InfoNCE over positives + mined + in-batch negatives, soft-label KL, embedding distillation.

All take L2-normalised embeddings (or raw scores where stated) and return a scalar tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(queries: torch.Tensor, docs: torch.Tensor, group_size: int, temperature: float = 0.05) -> torch.Tensor:
    """Contrastive loss with in-batch negatives.

    ``queries``: (B, D). ``docs``: (B * group_size, D), where rows ``i*group_size`` .. ``(i+1)*group_size - 1``
    are query i's positive followed by its mined negatives. Every other document in the batch is a
    negative for query i as well. Returns mean cross-entropy of picking the positive.
    """
    if docs.shape[0] != queries.shape[0] * group_size:
        raise ValueError(f"expected {queries.shape[0] * group_size} docs for {queries.shape[0]} queries x {group_size}, got {docs.shape[0]}")
    logits = queries @ docs.T / temperature
    target = torch.arange(queries.shape[0], device=queries.device) * group_size
    return F.cross_entropy(logits, target)


def group_scores(queries: torch.Tensor, docs: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B, group_size) similarities of each query with its own candidate group (positive first)."""
    grouped = docs.view(queries.shape[0], group_size, -1)
    return torch.einsum("bd,bgd->bg", queries, grouped)


def soft_label_kl(student_scores: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """KL(teacher || student) over each query's candidates; student probabilities are softmax(scores / temperature).

    ``student_scores``: (B, C) similarities; ``teacher_probs``: (B, C) rows summing to 1.
    """
    log_student = F.log_softmax(student_scores / temperature, dim=-1)
    return F.kl_div(log_student, teacher_probs, reduction="batchmean")


def teacher_distribution(scores: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Teacher soft labels: a temperature softmax over each row of teacher scores."""
    return torch.softmax(scores / temperature, dim=-1)


def distill_loss(queries: torch.Tensor, docs: torch.Tensor, teacher_queries: torch.Tensor, teacher_docs: torch.Tensor,
                 temperature: float = 0.05, sim_weight: float = 10.0) -> torch.Tensor:
    """Relational distillation of a dense teacher, no projection (the student may have another dimension).

    KL between the teacher's and the student's softmax over each query's similarities to every document of
    the batch (the teacher's in-batch soft labels), plus ``sim_weight`` x MSE between the two models' cosine
    matrices over all texts of the batch (queries and documents), which keeps the teacher's absolute geometry.
    Inputs are normalised here; the student's are used as served.
    """
    q, d = F.normalize(queries, dim=-1), F.normalize(docs, dim=-1)
    tq, td = F.normalize(teacher_queries, dim=-1), F.normalize(teacher_docs, dim=-1)
    kl = F.kl_div(F.log_softmax(q @ d.T / temperature, dim=-1), F.softmax(tq @ td.T / temperature, dim=-1),
                  reduction="batchmean")
    s, t = torch.cat([q, d]), torch.cat([tq, td])
    return kl + sim_weight * F.mse_loss(s @ s.T, t @ t.T)
