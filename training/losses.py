"""The LG-ANNA loss: InfoNCE over positive + mined + in-batch negatives, plus KL(teacher || student).

Why ours: the library's ``MultipleNegativesRankingLoss`` and ``DistillKLDivLoss`` each embed the batch; the
paper trains on their weighted sum over one set of embeddings. The library's GradCache (``CachedLossMixin``)
and ``all_gather_with_grad`` (cross-device negatives) are reused. The loss terms live in
:mod:`lganna_rag.objectives` (shared with ``adapt``) and are unit tested.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from sentence_transformers.base.losses.gradcache import CachedLossMixin
from torch import nn

from lganna_rag.objectives import group_scores, info_nce, self_distillation, soft_label_kl, teacher_distribution

__all__ = ["LGAnnaLoss", "group_scores", "info_nce", "self_distillation", "soft_label_kl", "teacher_distribution"]


class LGAnnaLoss(CachedLossMixin, nn.Module):
    """``contrastive_weight`` x InfoNCE + ``kl_weight`` x KL(teacher || student) + ``self_distill_weight`` x
    :func:`self_distillation` over columns anchor, positive, negative_1..k. ``labels`` (B, 1 + k): teacher scores,
    softmaxed at ``soft_label_temperature`` (absent: InfoNCE); with self-distillation each row continues with the
    base model's vectors of its 2 + k texts (B, 1 + k + (2 + k) x dim)."""

    def __init__(self, model: Any, temperature: float = 0.05, contrastive_weight: float = 1.0, kl_weight: float = 1.0,
                 soft_label_temperature: float = 0.05, mini_batch_size: int | None = None,
                 gather_across_devices: bool = False, self_distill_weight: float = 0.0) -> None:
        """``mini_batch_size`` turns on GradCache; ``gather_across_devices`` adds other ranks' documents as negatives."""
        super().__init__()
        self.model, self.temperature, self.soft_label_temperature = model, temperature, soft_label_temperature
        self.contrastive_weight, self.kl_weight = contrastive_weight, kl_weight
        self.self_distill_weight = self_distill_weight
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
        if self.self_distill_weight:
            if labels is None or labels.dim() != 2 or labels.shape[1] != group + (group + 1) * queries.shape[1]:
                raise ValueError("self-distillation needs the base model's vectors in the labels (add_base_vectors)")
            student = torch.stack([queries, *columns], dim=1)
            base = labels[:, group:].to(queries.device).view(student.shape)
            loss = loss + self.self_distill_weight * self_distillation(student.flatten(0, 1), base.flatten(0, 1))
            labels = labels[:, :group]
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
                "self_distill_weight": self.self_distill_weight,
                "mini_batch_size": self.mini_batch_size, "gather_across_devices": self.gather_across_devices}
