"""The LG-ANNA loss: InfoNCE over positive + mined + in-batch negatives, plus KL(teacher || student).

Why ours: the library's ``MultipleNegativesRankingLoss`` and ``DistillKLDivLoss`` each embed the batch; the
paper trains on their weighted sum over one set of embeddings. The library's GradCache (``CachedLossMixin``)
and ``all_gather_with_grad`` (cross-device negatives) are reused. The pure functions are unit tested.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from sentence_transformers.base.losses.gradcache import CachedLossMixin
from torch import nn


def info_nce(queries: torch.Tensor, docs: torch.Tensor, group_size: int, temperature: float = 0.05,
             offset: int = 0) -> torch.Tensor:
    """Contrastive loss: query i's positive is ``docs`` row ``offset + i*group_size`` (its negatives follow);
    every other row of ``docs`` (other groups, other devices) is a negative for it too."""
    if docs.shape[0] < offset + queries.shape[0] * group_size:
        raise ValueError(f"expected at least {offset + queries.shape[0] * group_size} docs, got {docs.shape[0]}")
    logits = queries @ docs.T / temperature
    target = offset + torch.arange(queries.shape[0], device=queries.device) * group_size
    return F.cross_entropy(logits, target)


def group_scores(queries: torch.Tensor, docs: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B, group_size) similarities of each query with its own candidate group (positive first)."""
    return torch.einsum("bd,bgd->bg", queries, docs.view(queries.shape[0], group_size, -1))


def teacher_distribution(scores: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Teacher soft labels: a temperature softmax over each row of teacher scores."""
    return torch.softmax(scores / temperature, dim=-1)


def soft_label_kl(student_scores: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """KL(teacher || student) over each query's candidates; student probabilities are softmax(scores / temperature)."""
    log_student = F.log_softmax(student_scores / temperature, dim=-1)
    return F.kl_div(log_student, teacher_probs, reduction="batchmean")


class LGAnnaLoss(CachedLossMixin, nn.Module):
    """``contrastive_weight`` x InfoNCE + ``kl_weight`` x KL(teacher || student) over columns anchor, positive,
    negative_1..k; ``labels`` (B, 1 + k): teacher scores, softmaxed at ``soft_label_temperature`` (absent: InfoNCE)."""

    def __init__(self, model: Any, temperature: float = 0.05, contrastive_weight: float = 1.0, kl_weight: float = 1.0,
                 soft_label_temperature: float = 0.05, mini_batch_size: int | None = None,
                 gather_across_devices: bool = False) -> None:
        """``mini_batch_size`` turns on GradCache; ``gather_across_devices`` adds other ranks' documents as negatives."""
        super().__init__()
        self.model, self.temperature, self.soft_label_temperature = model, temperature, soft_label_temperature
        self.contrastive_weight, self.kl_weight = contrastive_weight, kl_weight
        self.mini_batch_size, self.gather_across_devices = mini_batch_size or 0, gather_across_devices
        self.uses_gradient_cache = bool(mini_batch_size)  # the mixin's per-instance switch: GradCache when set

    def forward(self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of one batch (GradCache when ``mini_batch_size`` is set)."""
        if self.mini_batch_size:
            return self.forward_cached(sentence_features, labels)
        return self.calculate_loss([[self.model(f)["sentence_embedding"]] for f in sentence_features], labels)

    def calculate_loss(self, reps: list[list[torch.Tensor]], labels: torch.Tensor | None = None, *,
                       with_backward: bool = False) -> torch.Tensor:
        """Both terms from the embeddings of every column (each a list of mini-batch tensors)."""
        queries = torch.cat(reps[0])
        columns = [torch.cat(r) for r in reps[1:]]
        if not columns:
            raise ValueError("LGAnnaLoss needs at least (anchor, positive) columns")
        group = len(columns)
        docs = torch.stack(columns, dim=1).reshape(queries.shape[0] * group, -1)  # query i's group: rows i*G..
        loss = queries.new_zeros(())
        if self.contrastive_weight:
            every_doc, offset = docs, 0
            if self.gather_across_devices and torch.distributed.is_available() and torch.distributed.is_initialized():
                from sentence_transformers.util.distributed import all_gather_with_grad

                every_doc = all_gather_with_grad(docs)
                offset = torch.distributed.get_rank() * docs.shape[0]
            loss = loss + self.contrastive_weight * info_nce(queries, every_doc, group, self.temperature, offset)
        if self.kl_weight and labels is not None and labels.dim() == 2:
            if labels.shape[1] != group:
                raise ValueError(f"teacher labels have {labels.shape[1]} scores per query but the batch has {group} documents")
            teacher = teacher_distribution(labels.to(queries.device, queries.dtype), self.soft_label_temperature)
            loss = loss + self.kl_weight * soft_label_kl(group_scores(queries, docs, group), teacher, self.temperature)
        if with_backward:  # GradCache step 2 (the library's contract): gradients up to the cached embeddings only
            torch.autograd.backward(loss)
            loss = loss.detach()
        return loss

    def get_config_dict(self) -> dict[str, Any]:
        """Hyper-parameters, for the model card."""
        return {"temperature": self.temperature, "contrastive_weight": self.contrastive_weight,
                "kl_weight": self.kl_weight, "soft_label_temperature": self.soft_label_temperature,
                "mini_batch_size": self.mini_batch_size, "gather_across_devices": self.gather_across_devices}
