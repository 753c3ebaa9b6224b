"""Adapters to LangChain, LlamaIndex and mteb; each imports its framework only when used.

- ``lganna_rag.integrations.langchain.LGAnnaEmbeddings`` (also ``from lganna_rag import LGAnnaEmbeddings``)
- ``lganna_rag.integrations.llama_index.LGAnnaEmbedding``
- ``lganna_rag.integrations.mteb.LGAnnaMTEBModel``
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from ..encoder import LGAnnaEncoder
    from ..prompts import Task


class EncoderHolder:
    """Loads an :class:`LGAnnaEncoder` on first use and remembers the query task and examples."""

    def __init__(
        self,
        model: str | None,
        encoder: "LGAnnaEncoder | None",
        task: "Task | str | None",
        examples: Iterable[Sequence[str]] | None,
        encoder_kwargs: dict[str, Any],
    ) -> None:
        from ..prompts import get_task

        self.model = model
        self.task = get_task(task, examples) if task is not None else None
        self.examples = [tuple(e) for e in examples] if examples is not None else None
        self._encoder = encoder
        self._kwargs = encoder_kwargs

    @property
    def encoder(self) -> "LGAnnaEncoder":
        """The encoder, loaded the first time it is needed."""
        if self._encoder is None:
            from ..encoder import LGAnnaEncoder

            self._encoder = LGAnnaEncoder.from_pretrained(self.model, **self._kwargs)
        return self._encoder

    def queries(self, texts: list[str], batch_size: int) -> list[list[float]]:
        """Query vectors (instruction and examples applied) as lists of floats."""
        vectors = self.encoder.encode_queries(texts, task=self.task, examples=self.examples, batch_size=batch_size)
        return vectors.tolist()

    def documents(self, texts: list[str], batch_size: int) -> list[list[float]]:
        """Document vectors (plain text) as lists of floats."""
        return self.encoder.encode_documents(texts, batch_size=batch_size).tolist()
