"""The instruction-aware embedder: any Hugging Face checkpoint, last-token/mean/CLS pooling.

``LGAnnaEncoder.from_pretrained()`` loads the default model (:mod:`lganna_rag.loading`); ``encode_queries``
renders each query with the task instruction and few-shot examples (:mod:`lganna_rag.rendering`),
``encode_documents`` embeds plain text. For decoders an EOS token is appended explicitly and
its final hidden state is the embedding (L2-normalised by default).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .loading import (CPU_DEFAULT_PRECISION, PRECISIONS, int8_backend, is_decoder_config, load, quantize_int8,
                      resolve_precision)
from .models import DEFAULT_MODEL, REGISTRY, ModelConfig
from .prompts import Task
from .rendering import PromptIgnoredWarning, QueryRendering, check_texts

__all__ = ["LGAnnaEncoder", "pool", "check_texts", "PromptIgnoredWarning", "PRECISIONS", "CPU_DEFAULT_PRECISION",
           "quantize_int8", "resolve_precision", "int8_backend"]

logger = logging.getLogger(__name__)
_is_decoder = is_decoder_config  # the name the training code used


def pool(
    hidden: torch.Tensor, attention_mask: torch.Tensor, method: str, prompt_lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Pool token states ``(batch, seq, dim)`` into ``(batch, dim)``; works for left and right padding.

    ``last`` takes the last position whose mask is 1, ``cls`` the first, ``mean`` averages them.
    ``prompt_lengths`` (mean only, right padding): the first ``prompt_lengths[i]`` positions of row ``i``
    are left out of the mean (sentence-transformers' ``Pooling(include_prompt=False)``).
    """
    mask = attention_mask.to(hidden.device)
    if method == "mean":
        if prompt_lengths is not None:
            positions = torch.arange(mask.shape[1], device=mask.device)
            mask = mask * (positions.unsqueeze(0) >= prompt_lengths.to(mask.device).unsqueeze(1))
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    seq_len = mask.shape[1]
    positions = torch.arange(seq_len, device=mask.device)
    if method == "last":
        index = (mask * positions).argmax(dim=1)
    elif method == "cls":
        index = (mask * (seq_len - positions)).argmax(dim=1)
    else:
        raise ValueError(f"unknown pooling {method!r}; use 'last', 'mean' or 'cls'")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


class LGAnnaEncoder(QueryRendering):
    """Embeds queries (with instructions and examples) and documents with one transformer."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        config: ModelConfig,
        *,
        name: str = "model",
        is_decoder: bool = True,
    ) -> None:
        """Wrap an already loaded ``model`` and ``tokenizer``; most users call :meth:`from_pretrained`."""
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.name = name
        self.is_decoder = is_decoder
        #: ``fp32``, ``bf16``, ``bf16-openvino``, ``int8-onnx`` or ``int8-torch`` (set by :meth:`from_pretrained`; a
        #: model passed in is taken as it is).
        self.precision = "fp32"
        #: The PEFT adapter directory merged into (or applied to) the base weights by :meth:`from_pretrained`.
        self.adapter_dir: Path | None = None
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if config.append_eos and eos is None:
            raise ValueError(f"model {name!r}: append_eos is set but the tokenizer has no EOS token")
        self.eos_token_id: int | None = eos
        pad = tokenizer.pad_token_id
        self.pad_token_id: int = pad if pad is not None else (eos if eos is not None else 0)
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if isinstance(limit, int) and config.max_length > limit:
            config.max_length = limit

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike | None = None,
        *,
        adapter: str | os.PathLike | None = None,
        merge_adapter: bool = True,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        precision: str | None = None,
        threads: int | None = None,
        **settings: Any,
    ) -> "LGAnnaEncoder":
        """Load a model by registered name, local directory or hub id (``None``: the default model).

        ``adapter`` is a PEFT LoRA directory applied on top, merged into the weights at load (encode speed
        equals the base model's; ``merge_adapter=False`` keeps it separate). ``settings`` override ``lganna.json``
        fields (e.g. ``pooling="mean"``). Only safetensors weights are loaded; ``trust_remote_code`` is off unless
        you pass it. ``precision`` is one of :data:`~lganna_rag.loading.PRECISIONS` (``None``: the CPU default,
        :data:`~lganna_rag.loading.CPU_DEFAULT_PRECISION`); ``threads`` sets the CPU threads (torch and ONNX Runtime).
        """
        name = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
        entry = REGISTRY.get(name)
        if entry is not None and entry.loader is not None:  # e.g. a static token table: its own encoder class
            module, attr = entry.loader.split(":")
            other = getattr(importlib.import_module(module), attr)
            return other.from_pretrained(name, max_length=max_length, device=device, precision=precision, **settings)
        loaded = load(name, adapter=adapter, merge_adapter=merge_adapter, device=device, dtype=dtype,
                      max_length=max_length, revision=revision, trust_remote_code=trust_remote_code,
                      precision=precision, threads=threads, **settings)
        encoder = cls(loaded.model, loaded.tokenizer, loaded.config, name=name, is_decoder=loaded.is_decoder)
        encoder.precision = loaded.precision
        encoder.adapter_dir = loaded.adapter_dir
        return encoder

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Save weights (safetensors; a PEFT model saves its adapter), tokenizer and ``lganna.json``."""
        if self.precision != "fp32":
            raise ValueError(f"this encoder runs at precision {self.precision!r}: save the fp32 model (load it with "
                             f"precision='fp32') and quantize at load time")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        self.config.save(out)
        return out

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        """The device the model runs on."""
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")  # ONNX Runtime int8: CPU

    @property
    def dimension(self) -> int:
        """Size of the embedding vectors."""
        return int(self.model.config.hidden_size)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"LGAnnaEncoder(name={self.name!r}, dim={self.dimension}, pooling={c.pooling!r}, "
            f"template={c.prompt_template!r}, max_length={c.max_length}, device={self.device})"
        )

    # ------------------------------------------------------------------ tokenisation and forward
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> tuple[list[list[int]], int]:
        """Token ids per text (EOS appended when configured) and how many texts were truncated."""
        max_length = max_length or self.config.max_length
        append = self.config.append_eos
        limit = max_length - 1 if append else max_length
        ids = self.tokenizer(
            list(texts), add_special_tokens=True, truncation=True, max_length=limit,
            return_attention_mask=False, return_token_type_ids=False,
        )["input_ids"]
        at_limit = [i for i, row in enumerate(ids) if len(row) >= limit]
        truncated = 0
        if at_limit:
            from transformers.utils import logging as hf_logging

            previous = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # silence "sequence longer than the model maximum"
            try:
                full = self.tokenizer([texts[i] for i in at_limit], add_special_tokens=True, truncation=False)["input_ids"]
            finally:
                hf_logging.set_verbosity(previous)
            truncated = sum(len(row) > limit for row in full)
        if append:
            eos = self.eos_token_id
            ids = [row if row and row[-1] == eos else row + [eos] for row in ids]
        return ids, truncated

    def collate(self, token_lists: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Right-pad token id lists into ``input_ids`` and ``attention_mask`` tensors on the model device."""
        width = max(len(t) for t in token_lists)
        input_ids = torch.full((len(token_lists), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(token_lists), width), dtype=torch.long)
        for row, toks in enumerate(token_lists):
            input_ids[row, : len(toks)] = torch.as_tensor(toks, dtype=torch.long)
            mask[row, : len(toks)] = 1
        dev = self.device
        return {"input_ids": input_ids.to(dev), "attention_mask": mask.to(dev)}

    def embed(self, batch: dict[str, torch.Tensor], normalize: bool | None = None) -> torch.Tensor:
        """Pooled (and optionally normalised) float32 embeddings of a collated batch; keeps autograd."""
        kwargs: dict[str, Any] = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.is_decoder:
            kwargs["use_cache"] = False
            if "position_ids" in batch:
                kwargs["position_ids"] = batch["position_ids"]
        hidden = self.model(**kwargs).last_hidden_state
        vectors = pool(hidden, batch["attention_mask"], self.config.pooling, batch.get("prompt_length")).float()
        if self.config.normalize if normalize is None else normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
        return vectors

    # ------------------------------------------------------------------ public encoding API
    def _encode_texts(
        self,
        texts: list[str],
        *,
        batch_size: int,
        show_progress_bar: bool | None,
        normalize_embeddings: bool | None,
        max_length: int | None,
        prompt_lengths: Sequence[int] | None = None,
    ) -> np.ndarray:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        ids, truncated = self.tokenize(texts, max_length)
        if truncated:
            logger.warning(
                "%d of %d texts were longer than max_length=%d tokens and were truncated",
                truncated, len(texts), max_length or self.config.max_length,
            )
        return self.encode_ids(ids, batch_size=batch_size, show_progress_bar=show_progress_bar,
                               normalize_embeddings=normalize_embeddings, prompt_lengths=prompt_lengths)

    def encode_ids(
        self,
        ids: Sequence[Sequence[int]],
        *,
        batch_size: int = 32,
        show_progress_bar: bool | None = False,
        normalize_embeddings: bool | None = None,
        prompt_lengths: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Embed texts already tokenised by :meth:`tokenize`, in length-sorted batches; rows in input order.

        ``prompt_lengths[i]`` leading tokens of text ``i`` are left out of a mean pool (see :func:`pool`).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not ids:
            return np.zeros((0, self.dimension), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        n_batches = (len(order) + batch_size - 1) // batch_size
        if show_progress_bar is None:
            show_progress_bar = n_batches > 16 and sys.stderr.isatty()
        from tqdm.auto import tqdm

        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), total=n_batches, desc="Encoding",
                              disable=not show_progress_bar, unit="batch"):
                index = order[start : start + batch_size]
                batch = self.collate([ids[i] for i in index])
                if prompt_lengths is not None:
                    batch["prompt_length"] = torch.as_tensor([prompt_lengths[i] for i in index], device=self.device)
                vectors = self.embed(batch, normalize=normalize_embeddings)
                out[index] = vectors.cpu().numpy()
        return out

    def encode(
        self,
        texts: str | Sequence[str],
        prompt: str | None = None,
        *,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        normalize_embeddings: bool | None = None,
        max_length: int | None = None,
        convert_to_numpy: bool = True,
    ) -> np.ndarray:
        """Embed ``texts`` as given, with ``prompt`` (a literal prefix) prepended when set.

        Returns a float32 array ``(len(texts), dim)``, or ``(dim,)`` for a single string.
        ``normalize_embeddings`` defaults to the model's setting (normally True).
        """
        if not convert_to_numpy:
            raise ValueError("only numpy output is supported (convert_to_numpy=True)")
        single = isinstance(texts, str)
        items = check_texts([texts] if single else texts)
        if prompt:
            items = [prompt + t for t in items]
        out = self._encode_texts(items, batch_size=batch_size, show_progress_bar=show_progress_bar,
                                 normalize_embeddings=normalize_embeddings, max_length=max_length)
        return out[0] if single else out

    def encode_queries(
        self,
        texts: str | Sequence[str],
        task: Task | str | None = None,
        examples: Iterable[Sequence[str]] | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed queries with a task instruction and optional few-shot ``(query, response)`` examples.

        ``task`` is a :class:`~lganna_rag.prompts.Task` or a registered name (``"retrieval"``,
        ``"sts"``, ``"SciFact"``, ...); ``None`` uses the model's default task. Models without a
        prompt template (e.g. ``minilm``) embed queries as plain text, and so do models trained with
        instructions only for some task types (``instruction_task_types``) for the other types.
        """
        single = isinstance(texts, str)
        items = check_texts([texts] if single else texts)
        rendered = self.render_queries(items, task, examples)
        if not self.excludes_prompt or rendered == items:
            out = self.encode(rendered, **kwargs)
            return out[0] if single else out
        normalize = kwargs.pop("normalize_embeddings", None)
        out = self._encode_texts(rendered, batch_size=kwargs.pop("batch_size", 32),
                                 show_progress_bar=kwargs.pop("show_progress_bar", None),
                                 normalize_embeddings=normalize, max_length=kwargs.pop("max_length", None),
                                 prompt_lengths=self._prompt_lengths(rendered, items))
        if kwargs:
            raise TypeError(f"encode_queries got unexpected keyword arguments {sorted(kwargs)}")
        return out[0] if single else out

    def query_batch(self, texts: Sequence[str], task: Task | str | None = None,
                    max_length: int | None = None) -> dict[str, torch.Tensor]:
        """A collated batch of queries as :meth:`encode_queries` feeds the model (instruction, prompt lengths):
        :meth:`embed` of it keeps autograd, for training a query encoder."""
        items = check_texts(texts)
        rendered = self.render_queries(items, task)
        batch = self.collate(self.tokenize(rendered, max_length)[0])
        if self.excludes_prompt and rendered != items:
            batch["prompt_length"] = torch.as_tensor(self._prompt_lengths(rendered, items), device=self.device)
        return batch

    def encode_documents(self, texts: str | Sequence[str], **kwargs: Any) -> np.ndarray:
        """Embed documents as plain text (no instruction)."""
        return self.encode(texts, **kwargs)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix between two sets of vectors."""
        a = np.atleast_2d(a).astype(np.float32)
        b = np.atleast_2d(b).astype(np.float32)
        a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(min=1e-12)
        b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(min=1e-12)
        return a @ b.T
