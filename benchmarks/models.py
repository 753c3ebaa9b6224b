"""Models the benchmarks compare, as mteb models: ``bm25``, ``minilm``, ``wordllama``, ``hybrid``, any encoder.

Dense models run through :class:`lganna_rag.integrations.mteb.LGAnnaMTEBModel` with an on-disk
embedding cache keyed by (model fingerprint, exact model input texts), so the prompt and the
data are both part of the key and re-runs are cheap.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from mteb.models.abs_encoder import AbsEncoder

from lganna_rag.integrations.mteb import LGAnnaMTEBModel
from lganna_rag.training.model import WORDLLAMA_TABLE, WORDLLAMA_TOKENIZER, wordllama_dir

#: Where cached embeddings live (ignored by git).
DEFAULT_CACHE = Path(__file__).resolve().parent / "cache"

#: Models that only rank (no vectors): evaluated on retrieval and reranking tasks only.
SEARCH_ONLY = ("bm25", "hybrid")


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8") if isinstance(part, str) else part)
        h.update(b"\x00")
    return h.hexdigest()


def file_fingerprint(directory: Path) -> str:
    """Hash of a model directory: its JSON configs in full, weights by size and first/last MiB."""
    parts: list[bytes | str] = []
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        rel = str(path.relative_to(directory))
        if path.suffix == ".json":
            parts += [rel, path.read_bytes()]
        elif path.suffix == ".safetensors":
            size = path.stat().st_size
            with path.open("rb") as fh:
                head = fh.read(1 << 20)
                fh.seek(max(0, size - (1 << 20)))
                tail = fh.read()
            parts += [rel, str(size), head, tail]
    return _digest(*parts)[:16]


class CachedLGAnnaModel(LGAnnaMTEBModel):
    """:class:`LGAnnaMTEBModel` that stores every encode call's output under ``cache_dir``."""

    def __init__(self, *args: Any, cache_dir: Path | None = DEFAULT_CACHE, **kwargs: Any) -> None:
        """Same arguments as :class:`LGAnnaMTEBModel`, plus ``cache_dir`` (``None`` disables caching)."""
        super().__init__(*args, **kwargs)
        self.cache_dir = cache_dir
        source = Path(getattr(self.encoder.model, "name_or_path", "") or ".")
        weights = file_fingerprint(source) if source.is_dir() else self.encoder.name
        settings = json.dumps(self.encoder.config.to_dict(), sort_keys=True)
        self.fingerprint = _digest(weights, settings, str(self.encoder.dimension))[:16]
        self.hits = 0
        self.misses = 0

    def _embed(self, texts: list[str], task: Any, examples: Any, options: dict[str, Any]) -> np.ndarray:
        if self.cache_dir is None:
            return super()._embed(texts, task, examples, options)
        rendered = self.encoder.render_queries(texts, task, examples) if task is not None else texts
        key = _digest(self.fingerprint, *rendered)[:32]
        path = self.cache_dir / self.fingerprint / f"{key}.npy"
        if path.is_file():
            self.hits += 1
            return np.load(path, allow_pickle=False)
        self.misses += 1
        vectors = super()._embed(texts, task, examples, options)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vectors, allow_pickle=False)
        tmp.replace(path)
        return vectors


class WordLlamaStatic(AbsEncoder):
    """WordLlama's static 256-d token embeddings (Llama-2 vocabulary), mean-pooled and L2-normalised.

    Loaded straight from the ``wordllama`` wheel's files (its own ``load()`` tries the network).
    """

    def __init__(self, dim: int = 256, max_length: int = 512) -> None:
        """Load the embedding table (``dim``-truncated Matryoshka dimensions) and the tokenizer."""
        from mteb.models.model_meta import ModelMeta
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        root = wordllama_dir()
        self.table = load_file(str(root / WORDLLAMA_TABLE))["embedding.weight"][:, :dim].astype(np.float32)
        self.tokenizer = Tokenizer.from_file(str(root / WORDLLAMA_TOKENIZER))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.mteb_model_meta = ModelMeta(
            loader=None, name="lganna-rag/wordllama", revision="l2_supercat_256", release_date=None,
            languages=["eng-Latn"], n_parameters=int(self.table.size), memory_usage_mb=None, max_tokens=max_length,
            embed_dim=dim, license="mit", open_weights=True, public_training_code=None, public_training_data=None,
            framework=["NumPy"], similarity_fn_name="cosine", use_instructions=False, training_datasets=None,
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Mean of the token vectors of each text (no special tokens), L2-normalised."""
        out = np.zeros((len(texts), self.table.shape[1]), dtype=np.float32)
        for i, enc in enumerate(self.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            if enc.ids:
                out[i] = self.table[enc.ids].mean(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.clip(norms, 1e-12, None)

    def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str, prompt_type: Any = None, **kwargs: Any) -> np.ndarray:
        """mteb encoder protocol: embed every text of the data loader."""
        return self.embed([t for batch in inputs for t in batch["text"]])


def load_model(name: str, *, cache_dir: Path | None = DEFAULT_CACHE, dense: str = "minilm") -> Any:
    """An mteb model for ``name``: ``bm25``, ``wordllama``, ``hybrid`` (BM25 + ``dense``, RRF) or an encoder name/path."""
    if name == "bm25":
        import mteb

        return mteb.get_model("mteb/baseline-bm25s")
    if name == "wordllama":
        return WordLlamaStatic()
    if name == "hybrid" or name.startswith("hybrid:"):
        from mteb.models.hybrid_wrappers import HybridSearch

        dense_name = name.split(":", 1)[1] if ":" in name else dense
        return HybridSearch([load_model("bm25"), load_model(dense_name, cache_dir=cache_dir)], fusion_strategy="rrf")
    return CachedLGAnnaModel(name, cache_dir=cache_dir)
