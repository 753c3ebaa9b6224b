"""An mteb 2.x encoder that maps mteb's task names and query/document prompt types onto our tasks.

Retrieval and reranking: queries get the task instruction (and examples), documents none.
Symmetric tasks (STS, classification, clustering, pair classification, summarization): every
text gets the instruction, as in e5-mistral and LG-ANNA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta
from mteb.types import PromptType

from ..prompts import SYMMETRIC_TASK_TYPES, Task, get_task

if TYPE_CHECKING:  # pragma: no cover
    from mteb.abstasks.task_metadata import TaskMetadata
    from torch.utils.data import DataLoader

    from ..encoder import LGAnnaEncoder

#: mteb task type -> our task type name.
MTEB_TYPES = {
    "Retrieval": "retrieval",
    "InstructionRetrieval": "retrieval",
    "Reranking": "reranking",
    "InstructionReranking": "reranking",
    "STS": "sts",
    "Classification": "classification",
    "MultilabelClassification": "classification",
    "Clustering": "clustering",
    "PairClassification": "pair_classification",
    "Summarization": "summarization",
    "BitextMining": "sts",
}


def task_for(task_metadata: "TaskMetadata") -> Task:
    """Our registered task for an mteb task: by its name, else by its type."""
    try:
        return get_task(task_metadata.name)
    except KeyError:
        kind = MTEB_TYPES.get(task_metadata.type)
        if kind is None:
            raise ValueError(f"mteb task type {task_metadata.type!r} ({task_metadata.name}) is not supported") from None
        return get_task(kind)


class LGAnnaMTEBModel(AbsEncoder):
    """mteb encoder protocol over :class:`LGAnnaEncoder`.

    >>> import mteb
    >>> model = LGAnnaMTEBModel("minilm")
    >>> results = mteb.evaluate(model, mteb.get_tasks(tasks=["STSBenchmark"]))  # needs the data locally
    """

    def __init__(
        self,
        model_name: str | None = None,
        revision: str | None = None,
        *,
        device: str | None = None,
        encoder: "LGAnnaEncoder | None" = None,
        examples: dict[str, Sequence[Sequence[str]]] | None = None,
        use_instructions: bool = True,
        **kwargs: Any,
    ) -> None:
        """Load ``model_name`` (or wrap ``encoder``); ``examples`` maps task names to few-shot pairs."""
        if encoder is None:
            from ..encoder import LGAnnaEncoder

            encoder = LGAnnaEncoder.from_pretrained(model_name, device=device, revision=revision, **kwargs)
        self.encoder = encoder
        self.examples = {k.lower(): v for k, v in (examples or {}).items()}
        self.use_instructions = use_instructions and encoder.config.prompt_template is not None
        self.mteb_model_meta = ModelMeta(
            loader=None, name=f"lganna-rag/{encoder.name.strip('/').split('/')[-1]}", revision=revision or "local",
            release_date=None, languages=["eng-Latn"], n_parameters=sum(p.numel() for p in encoder.model.parameters()),
            memory_usage_mb=None, max_tokens=encoder.config.max_length, embed_dim=encoder.dimension, license=None,
            open_weights=True, public_training_code=None, public_training_data=None, framework=["PyTorch"],
            similarity_fn_name="cosine", use_instructions=self.use_instructions, training_datasets=None,
        )

    def encode(
        self,
        inputs: "DataLoader[Any]",
        *,
        task_metadata: "TaskMetadata",
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Encode every text of ``inputs``: queries/symmetric texts with the task's instruction."""
        texts = [text for batch in inputs for text in batch["text"]]
        options = {"batch_size": kwargs.get("batch_size", 32), "show_progress_bar": kwargs.get("show_progress_bar", False)}
        task = task_for(task_metadata)
        symmetric = task.task_type in SYMMETRIC_TASK_TYPES
        if not self.use_instructions or (prompt_type == PromptType.document and not symmetric):
            return self._embed(texts, None, None, options)
        examples: Iterable[Sequence[str]] | None = self.examples.get(task_metadata.name.lower())
        return self._embed(texts, task, examples, options)

    def _embed(self, texts: list[str], task: Task | None, examples: Any, options: dict[str, Any]) -> np.ndarray:
        """Documents (``task=None``: plain text) or queries rendered with ``task`` and ``examples``."""
        if task is None:
            return self.encoder.encode_documents(texts, **options)
        return self.encoder.encode_queries(texts, task=task, examples=examples, **options)
