"""LangChain ``Embeddings`` backed by :class:`lganna_rag.LGAnnaEncoder`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from langchain_core.embeddings import Embeddings

from . import EncoderHolder

if TYPE_CHECKING:  # pragma: no cover
    from ..encoder import LGAnnaEncoder
    from ..prompts import Task


class LGAnnaEmbeddings(Embeddings):
    """LG-ANNA embeddings for LangChain: queries get the task instruction and examples, documents none.

    Example:
        >>> from lganna_rag import LGAnnaEmbeddings
        >>> emb = LGAnnaEmbeddings(task="retrieval")          # the default model
        >>> vector = emb.embed_query("how do I reset my password?")

    ``model`` is a registered name, a local directory or a hub id (``None``: the default model);
    ``encoder`` reuses an already loaded :class:`LGAnnaEncoder`; other keyword arguments go to
    :meth:`LGAnnaEncoder.from_pretrained` (``device``, ``adapter``, ``max_length``, ...).
    The model loads on first use.
    """

    def __init__(
        self,
        model: str | None = None,
        task: "Task | str | None" = None,
        examples: Iterable[Sequence[str]] | None = None,
        *,
        batch_size: int = 32,
        encoder: "LGAnnaEncoder | None" = None,
        **encoder_kwargs: Any,
    ) -> None:
        """Configure the model and the query task; nothing is loaded until the first embedding."""
        self._holder = EncoderHolder(model, encoder, task, examples, encoder_kwargs)
        self.model = model
        self.task = self._holder.task
        self.batch_size = batch_size

    @property
    def encoder(self) -> "LGAnnaEncoder":
        """The underlying encoder (loaded on first access)."""
        return self._holder.encoder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (no instruction)."""
        return self._holder.documents(texts, self.batch_size)

    def embed_query(self, text: str) -> list[float]:
        """Embed one query with the configured task instruction and examples."""
        return self._holder.queries([text], self.batch_size)[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents` (runs in a worker thread)."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query` (runs in a worker thread)."""
        return await asyncio.to_thread(self.embed_query, text)

    def __repr__(self) -> str:
        task = self.task.name if self.task is not None else None
        return f"LGAnnaEmbeddings(model={self.model!r}, task={task!r})"
