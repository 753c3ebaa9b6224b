"""The fast tier: a static-embedding encoder (WordLlama's 256-d token table, mean-pooled), model ``wordllama``.

A text's vector is the L2-normalised mean of its tokens' rows in a fixed table: no transformer layers,
so it encodes roughly two orders of magnitude more texts per second than MiniLM at a lower quality
(see the README's model table). It is meant for hybrid (dense + BM25) search over large folders.

The table and tokenizer are read straight from the installed ``wordllama`` package's files
(``pip install wordllama``, or ``lganna-rag[fast]``); its own ``load()`` is never called (it tries the network).
:class:`StaticEncoder` subclasses :class:`~lganna_rag.encoder.LGAnnaEncoder`, so ``encode``,
``encode_queries``, ``encode_documents``, ``tokenize`` and the chunker work the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .encoder import LGAnnaEncoder
from .loading import PRECISIONS
from .models import WORDLLAMA_TABLE, WORDLLAMA_TOKENIZER, ModelConfig, ModelNotFoundError, wordllama_dir

#: Texts embedded per table lookup (bounds the temporary memory, not the result).
_CHUNK = 4096


def wordllama_tokenizer() -> Any:
    """WordLlama's Llama-2 tokenizer as a transformers fast tokenizer (no padding or truncation): the text's
    tokens only."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_file(str(Path(wordllama_dir()) / WORDLLAMA_TOKENIZER))
    raw.post_processor = None
    raw.no_padding()
    raw.no_truncation()
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


class StaticEncoder(LGAnnaEncoder):
    """Mean of static token vectors, L2-normalised; the same encoding API as :class:`LGAnnaEncoder`."""

    def __init__(self, table: torch.Tensor, tokenizer: Any, config: ModelConfig, *, name: str = "wordllama",
                 source: str = "") -> None:
        """Wrap a ``(vocab, dim)`` float table and a fast tokenizer that adds no special tokens."""
        bag = torch.nn.EmbeddingBag.from_pretrained(table.float(), mode="mean", freeze=True)
        bag.name_or_path = source  # what the benchmarks' embedding cache fingerprints
        super().__init__(bag, tokenizer, config, name=name, is_decoder=False)
        self._fast = tokenizer.backend_tokenizer  # the Rust tokenizer, for batch encoding without the wrapper

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = "wordllama", *, max_length: int | None = None,  # type: ignore[override]
                        dim: int | None = None, device: str | torch.device | None = None, precision: str | None = None,
                        **settings: Any) -> "StaticEncoder":
        """Load WordLlama's table (``dim`` keeps the first Matryoshka dimensions) from the ``wordllama`` package.

        ``precision`` is accepted for interface compatibility: a table lookup has no int8 path, so it stays fp32.
        ``device`` must be CPU (lookups are memory-bound). ``settings`` override the served settings.
        """
        from safetensors.torch import load_file

        if name_or_path not in (None, "wordllama"):
            raise ModelNotFoundError(f"StaticEncoder loads 'wordllama', not {name_or_path!r}")
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError("the static model runs on CPU only")
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        root = wordllama_dir()
        table = load_file(str(Path(root) / WORDLLAMA_TABLE))["embedding.weight"]
        if dim is not None:
            if not 1 <= dim <= table.shape[1]:
                raise ValueError(f"dim must be between 1 and {table.shape[1]}, got {dim}")
            table = table[:, :dim]
        tokenizer = wordllama_tokenizer()  # WordLlama embeds the text's tokens only (no <s>)
        values = {"pooling": "mean", "normalize": True, "append_eos": False, "max_length": 512,
                  "prompt_template": None, "provenance": {"source": "wordllama (l2_supercat_256)", "kind": "static"}}
        values.update(settings)
        if max_length is not None:
            values["max_length"] = max_length
        return cls(table, tokenizer, ModelConfig(**values), name="wordllama", source=root)

    @property
    def dimension(self) -> int:
        """Size of the embedding vectors."""
        return int(self.model.embedding_dim)

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> tuple[list[list[int]], int]:
        """Token ids per text (no special tokens) and how many texts were truncated to ``max_length``."""
        limit = max_length or self.config.max_length
        encodings = self._fast.encode_batch(list(texts), add_special_tokens=False)
        ids = [e.ids[:limit] for e in encodings]
        return ids, sum(len(e.ids) > limit for e in encodings)

    def encode_ids(self, ids: Sequence[Sequence[int]], *, batch_size: int = 32, show_progress_bar: bool | None = False,
                   normalize_embeddings: bool | None = None, prompt_lengths: Sequence[int] | None = None) -> np.ndarray:
        """Mean of each text's token rows (an empty text gives a zero vector); ``batch_size`` is not needed here."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(ids), self.dimension), dtype=np.float32)
        normalize = self.config.normalize if normalize_embeddings is None else normalize_embeddings
        with torch.inference_mode():
            for start in range(0, len(ids), _CHUNK):
                rows = [list(r)[(prompt_lengths[start + i] if prompt_lengths is not None else 0):]
                        for i, r in enumerate(ids[start:start + _CHUNK])]
                lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
                flat = torch.tensor([t for r in rows for t in r], dtype=torch.long)
                offsets = torch.cumsum(lengths, 0) - lengths
                vectors = self.model(flat, offsets)  # an empty bag gives zeros
                if normalize:
                    vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
                out[start:start + len(rows)] = vectors.numpy()
        return out

    def embed(self, batch: dict[str, torch.Tensor], normalize: bool | None = None) -> torch.Tensor:
        """Pooled vectors of a collated batch (padding excluded)."""
        ids = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
        return torch.from_numpy(self.encode_ids(ids, normalize_embeddings=normalize))

    def save_pretrained(self, directory: Any) -> Path:
        """Not supported: the table comes from the ``wordllama`` package."""
        raise NotImplementedError("the static 'wordllama' model is loaded from the wordllama package; nothing to save")
