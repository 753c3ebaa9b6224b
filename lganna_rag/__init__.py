"""lganna-rag: instruction-aware decoder embeddings (LG-ANNA method) for retrieval and RAG.

``LGAnnaEncoder`` embeds queries (instruction + few-shot examples) and documents;
``Index`` chunks, embeds and stores documents in Qdrant and searches them (dense, BM25 or hybrid);
``LGAnnaEmbeddings`` is the LangChain ``Embeddings`` adapter and ``LGAnnaEmbedding`` the LlamaIndex one.
Everything is imported lazily, so the core never imports LangChain or LlamaIndex (or torch, or Qdrant)
unless you ask for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["LGAnnaEncoder", "LGAnnaEmbeddings", "LGAnnaEmbedding", "Index", "Task", "get_task", "render_query",
           "ModelConfig", "__version__"]

_LAZY = {
    "LGAnnaEncoder": ("lganna_rag.encoder", "LGAnnaEncoder"),
    "LGAnnaEmbeddings": ("lganna_rag.integrations.langchain", "LGAnnaEmbeddings"),
    "LGAnnaEmbedding": ("lganna_rag.integrations.llama_index", "LGAnnaEmbedding"),
    "Index": ("lganna_rag.index", "Index"),
    "Task": ("lganna_rag.prompts", "Task"),
    "get_task": ("lganna_rag.prompts", "get_task"),
    "render_query": ("lganna_rag.prompts", "render_query"),
    "ModelConfig": ("lganna_rag.models", "ModelConfig"),
}

#: Names that need an optional framework: (extra to install, what it provides).
_EXTRAS = {"LGAnnaEmbeddings": ("langchain", "LangChain (langchain-core)"),
           "LGAnnaEmbedding": ("llamaindex", "LlamaIndex (llama-index-core)")}

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import LGAnnaEncoder
    from .index import Index
    from .integrations.langchain import LGAnnaEmbeddings
    from .integrations.llama_index import LGAnnaEmbedding
    from .models import ModelConfig
    from .prompts import Task, get_task, render_query


def __getattr__(name: str) -> Any:
    """Import public names on first use (keeps ``import lganna_rag`` fast and framework-free)."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        try:
            value = getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            extra = _EXTRAS.get(name)
            if extra is None or (exc.name or "").startswith("lganna_rag"):
                raise
            raise ModuleNotFoundError(
                f"{name} needs {extra[1]}, which is not installed ({exc.name} is missing): "
                f'pip install "lganna-rag[{extra[0]}]"', name=exc.name
            ) from exc
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lganna_rag' has no attribute {name!r}")
