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

from lganna_rag.integrations.mteb import LGAnnaMTEBModel

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
        adapter = getattr(self.encoder, "adapter_dir", None)  # the base's name_or_path does not tell adapters apart
        if adapter is not None:
            weights += "+" + file_fingerprint(adapter)
        settings = json.dumps(self.encoder.config.to_dict(), sort_keys=True)
        precision = [] if self.encoder.precision == "fp32" else [self.encoder.precision]  # fp32 caches keep their keys
        self.fingerprint = _digest(weights, settings, str(self.encoder.dimension), *precision)[:16]
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


class WordLlamaStatic(LGAnnaMTEBModel):
    """The core fast-tier model ``wordllama`` (:class:`lganna_rag.static.StaticEncoder`) as an mteb model."""

    def __init__(self, dim: int | None = None, max_length: int = 512) -> None:
        """Load WordLlama's table (first ``dim`` Matryoshka dimensions; all 256 by default)."""
        from lganna_rag.static import StaticEncoder

        super().__init__(encoder=StaticEncoder.from_pretrained("wordllama", dim=dim, max_length=max_length))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Mean of the token vectors of each text (no special tokens), L2-normalised."""
        return self.encoder.encode(list(texts), show_progress_bar=False)


def load_model(name: str, *, cache_dir: Path | None = DEFAULT_CACHE, dense: str = "minilm") -> Any:
    """An mteb model for ``name``: ``bm25``, ``wordllama``, ``hybrid`` (BM25 + ``dense``, RRF), ``plain:NAME``
    (NAME with instructions off) or an encoder name/path; ``NAME@PRECISION`` runs it at that CPU precision
    (e.g. ``minilm@int8-onnx``; fp32 otherwise)."""
    if name == "bm25":
        import mteb

        return mteb.get_model("mteb/baseline-bm25s")
    if name == "wordllama":
        return WordLlamaStatic()
    if name == "hybrid" or name.startswith("hybrid:"):
        from mteb.models.hybrid_wrappers import HybridSearch

        dense_name = name.split(":", 1)[1] if ":" in name else dense
        return HybridSearch([load_model("bm25"), load_model(dense_name, cache_dir=cache_dir)], fusion_strategy="rrf")
    if name.startswith("plain:"):  # the same model with instructions off (queries embedded as plain text)
        plain, _, precision = name.split(":", 1)[1].partition("@")
        return CachedLGAnnaModel(plain, cache_dir=cache_dir, use_instructions=False, precision=precision or "fp32")
    # fp32 unless asked: the quality tables compare models; the embedding cache's fingerprint is the model's weights and
    # settings (and a precision other than fp32)
    name, _, precision = name.partition("@")
    return CachedLGAnnaModel(name, cache_dir=cache_dir, precision=precision or "fp32")
