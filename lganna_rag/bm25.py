"""BM25 sparse vectors for hybrid search, with Qdrant's own tokenizer (the IDF is applied by Qdrant)."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


class SparseEncoder:
    """BM25-style sparse vectors with Qdrant's tokenizer (English stemming and stopwords).

    Documents get saturated, length-normalised term frequencies (``k``, ``b``, ``avg_len``); queries get
    weight 1 per term; the collection's IDF modifier supplies the inverse document frequency. A
    collection's ``avg_len`` is estimated once, from the first batch written, and kept: recomputing it
    would change every stored vector, so a collection grown incrementally may score BM25 slightly
    differently from a fresh build (``recreate=True`` re-estimates it).
    """

    def __init__(self, avg_len: float = 256.0, k: float = 1.2, b: float = 0.75, language: str = "english") -> None:
        """Create the model; ``avg_len`` is the expected chunk length in BM25 tokens."""
        import qdrant_edge as qe

        self.settings = {"avg_len": float(avg_len), "k": float(k), "b": float(b), "language": language}
        self._bm25 = qe.Bm25(qe.Bm25Config(k=k, b=b, avg_len=avg_len, language=language))

    @staticmethod
    def estimate_avg_len(texts: Sequence[str], language: str = "english", default: float = 256.0) -> float:
        """Mean length in BM25 tokens of ``texts`` (``default`` when fewer than 16 texts are given)."""
        import qdrant_edge as qe

        if len(texts) < 16:
            return default
        counter = qe.Bm25(qe.Bm25Config(k=1e6, b=0.0, language=language))  # weights ~= raw term counts
        lengths = [sum(counter.embed_document(t).values) for t in texts]
        return max(1.0, round(float(np.mean(lengths)), 1))

    def documents(self, texts: Iterable[str]) -> list[tuple[list[int], list[float]]]:
        """Sparse vectors ``(indices, values)`` of documents."""
        out = []
        for t in texts:
            v = self._bm25.embed_document(t)
            out.append((v.indices, v.values))
        return out

    def query(self, text: str) -> tuple[list[int], list[float]]:
        """Sparse vector of a query (may be empty when it has only stopwords)."""
        v = self._bm25.embed_query(text)
        return v.indices, v.values
