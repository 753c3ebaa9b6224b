"""LlamaIndex ``BaseEmbedding`` backed by :class:`lganna_rag.LGAnnaEncoder`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from pydantic import PrivateAttr

from ..models import default_model_name
from . import EncoderHolder

if TYPE_CHECKING:  # pragma: no cover
    from ..encoder import LGAnnaEncoder
    from ..prompts import Task


class LGAnnaEmbedding(BaseEmbedding):
    """LG-ANNA embeddings for LlamaIndex; the query instruction is applied on the query side only.

    Example:
        >>> from lganna_rag.integrations.llama_index import LGAnnaEmbedding
        >>> from llama_index.core import Settings
        >>> Settings.embed_model = LGAnnaEmbedding(task="retrieval")
    """

    _holder: EncoderHolder = PrivateAttr()

    def __init__(
        self,
        model: str | None = None,
        task: "Task | str | None" = None,
        examples: Iterable[Sequence[str]] | None = None,
        *,
        encoder: "LGAnnaEncoder | None" = None,
        embed_batch_size: int = 32,
        **encoder_kwargs: Any,
    ) -> None:
        """Configure the model and the query task; the model loads on first use."""
        holder = EncoderHolder(model, encoder, task, examples, encoder_kwargs)
        name = model or (encoder.name if encoder is not None else default_model_name())
        super().__init__(model_name=name, embed_batch_size=embed_batch_size)
        self._holder = holder

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex serialisation."""
        return "LGAnnaEmbedding"

    @property
    def encoder(self) -> "LGAnnaEncoder":
        """The underlying encoder (loaded on first access)."""
        return self._holder.encoder

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._holder.queries([query], self.embed_batch_size)[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._holder.documents([text], self.embed_batch_size)[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._holder.documents(texts, self.embed_batch_size)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
