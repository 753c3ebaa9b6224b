"""A Qdrant index of document chunks: incremental, crash-safe indexing and dense / BM25 / hybrid search.

``Index`` is the one interface; it stores points in one of two backends:

- ``EdgeBackend``: the Qdrant engine in-process (``qdrant-edge-py``), under ``./.lganna/<collection>/``
  (the default; no server);
- ``ClientBackend``: a Qdrant server or cluster through ``qdrant-client`` (``url=``/``api_key=``, or a
  ready ``client=``, e.g. ``QdrantClient(path=...)`` local mode).

The backends live in :mod:`lganna_rag.stores`. Every point is one chunk: a dense vector from
:class:`~lganna_rag.encoder.LGAnnaEncoder`, a BM25-style sparse vector (term weights from Qdrant's own
BM25 tokenizer; Qdrant applies IDF at query time) and a payload (``text``, ``source``, ``root``, ``chunk``, ``n_chunks``, ``start``, ``end``, ``file_hash``).
A collection records the model (name, dimension, pooling, prompt template and version), the BM25
settings and the chunking settings; opening it with another model is a :class:`ModelMismatchError`.

Crash safety: the store itself is the only state. A file is *complete* when its points are exactly
chunks ``0..n-1`` of its current hash; anything else (a run killed while writing or replacing it) is
repaired by the next run, which writes only the missing chunks and then deletes stale ones.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from .ingest import (ID_NAMESPACE, Chunker, FileRef, LoadedFile, Skip, chunk_id, content_hash, discover, file_identity,
                     load_file, path_from_safe_name, safe_name)
from .stores import DEFAULT_PATH, QUANTIZATIONS, ClientBackend, EdgeBackend, IndexStoreError, StoreDamagedError, Where

if TYPE_CHECKING:  # pragma: no cover
    from .adapt import AdaptReport
    from .encoder import LGAnnaEncoder
    from .prompts import Task

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_COLLECTION = "default"
DEFAULT_CHUNK_SIZE = 256
DEFAULT_OVERLAP = 32
#: Chunks encoded and written per step (Ctrl-C stops after the current step).
WRITE_BATCH = 256
#: How many candidates each side contributes to a hybrid (RRF) search, at least.
MIN_PREFETCH = 100
MODES = ("dense", "sparse", "hybrid")
_MODEL_KEYS = ("name", "dimension", "pooling", "normalize", "prompt_template", "prompt_version")
_STATE_FIELDS = ["path", "root", "source", "file_hash", "chunk", "n_chunks", "start", "end"]


class ModelMismatchError(IndexStoreError):
    """The collection was built with another model (or prompt format) than the one given."""


class CollectionNotFoundError(IndexStoreError):
    """The collection does not exist yet."""


# ------------------------------------------------------------------------------------------ results
@dataclass
class Hit:
    """One search result: a chunk, its score and where it comes from."""

    id: str
    score: float
    text: str
    source: str | None
    chunk: int | None
    start: int | None
    end: int | None
    payload: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (payload fields other than the text included)."""
        extra = {k: v for k, v in self.payload.items() if k not in ("text", "source", "chunk", "start", "end")}
        return {"id": self.id, "score": self.score, "source": self.source, "chunk": self.chunk,
                "start": self.start, "end": self.end, "text": self.text, **extra}


@dataclass
class IndexReport:
    """What an ``add_files`` run did."""

    indexed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    failed: list[Skip] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    chunks_written: int = 0
    chunks_reused: int = 0
    chunks_deleted: int = 0
    pruned: list[str] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    encode_seconds: float = 0.0
    #: Seconds of ``seconds`` spent loading the model (not counted in ``chunks_per_second``).
    load_seconds: float = 0.0
    interrupted: bool = False

    @property
    def chunks_per_second(self) -> float:
        """Chunks written per second of the run, model loading excluded."""
        busy = self.seconds - self.load_seconds
        return self.chunks_written / busy if busy > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "files_indexed": len(self.indexed), "files_unchanged": len(self.unchanged),
            "files_skipped": len(self.skipped), "files_failed": len(self.failed), "files_pruned": len(self.pruned),
            "chunks_written": self.chunks_written, "chunks_reused": self.chunks_reused,
            "chunks_deleted": self.chunks_deleted, "seconds": round(self.seconds, 3),
            "load_seconds": round(self.load_seconds, 3), "chunks_per_second": round(self.chunks_per_second, 2), "interrupted": self.interrupted,
            "skipped": [{"source": s.source, "reason": s.reason} for s in self.skipped],
            "failed": [{"source": s.source, "reason": s.reason} for s in self.failed],
            "warnings": [{"source": s, "warning": w} for s, w in self.warnings],
            "indexed": self.indexed, "pruned": self.pruned,
            "removed": [{"source": s, "reason": r} for s, r in self.removed],
            "kept_not_in_run": self.kept, "repairs": self.repairs,
        }


@dataclass
class IndexProgress:
    """Progress of an ``add_files`` run, passed to the ``progress`` callback after each step."""

    files_total: int = 0
    files_done: int = 0
    chunks_written: int = 0
    chunks_pending: int = 0
    current: str = ""
    started: float = field(default_factory=time.perf_counter)
    event: str = "start"
    #: Seconds since ``started`` spent loading the model (not counted in ``chunks_per_second``).
    load_seconds: float = 0.0

    @property
    def chunks_per_second(self) -> float:
        """Chunks written per second so far, model loading excluded."""
        elapsed = time.perf_counter() - self.started - self.load_seconds
        return self.chunks_written / elapsed if elapsed > 0 else 0.0


# ------------------------------------------------------------------------------------------ BM25
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


# ------------------------------------------------------------------------------------------ Index
def model_metadata(encoder: "LGAnnaEncoder") -> dict[str, Any]:
    """What a collection records about the model that made its vectors."""
    c = encoder.config
    return {"name": encoder.name, "dimension": encoder.dimension, "pooling": c.pooling, "normalize": c.normalize,
            "prompt_template": c.prompt_template, "prompt_version": c.prompt_version}


def _describe_model(m: dict[str, Any]) -> str:
    return (f"{m.get('dimension')}-d vectors from model {m.get('name')!r} (pooling {m.get('pooling')}, prompt template "
            f"{m.get('prompt_template') or 'none'} v{m.get('prompt_version')})")


class Index:
    """A searchable collection of document chunks in Qdrant.

    Example:
        >>> from lganna_rag import Index
        >>> index = Index("./.lganna", collection="docs")          # local store; or url="http://..."
        >>> report = index.add_files(["./docs"])                    # incremental: re-runs skip unchanged files
        >>> hits = index.search("how do I rotate the API key?", k=5, mode="hybrid")

    ``model`` is a registered name, directory or hub id (``None``: the model the collection was built with,
    else the default model); ``encoder`` reuses a loaded :class:`LGAnnaEncoder`. ``url``/``api_key`` (or
    ``client``) select a Qdrant server instead of the local store at ``path``. ``recreate=True`` deletes
    the collection first.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        collection: str = DEFAULT_COLLECTION,
        model: str | os.PathLike | None = None,
        encoder: "LGAnnaEncoder | None" = None,
        url: str | None = None,
        api_key: str | None = None,
        client: Any = None,
        timeout: float = 10.0,
        batch_size: int = 32,
        recreate: bool = False,
        quantization: str | None = None,
    ) -> None:
        """Open (lazily create) a collection; raises :class:`IndexStoreError` for an unusable store."""
        if url or client is not None:
            if path is not None:
                raise ValueError("give either path= (local store) or url=/client= (Qdrant server), not both")
            self.backend: EdgeBackend | ClientBackend = ClientBackend(collection, url=url, api_key=api_key,
                                                                      timeout=timeout, client=client)
        else:
            self.backend = EdgeBackend(path if path is not None else DEFAULT_PATH, collection)
        self.collection = collection
        self.batch_size = batch_size
        self._model = str(model) if model is not None else None
        self._encoder = encoder
        self._given_encoder = encoder is not None
        #: Queries' encoder when the collection has an adapter (``lganna-rag adapt``); documents keep ``encoder``.
        self._query_encoder: "LGAnnaEncoder | None" = None
        #: Seconds this index spent loading its model (``add_files`` rates leave them out).
        self.load_seconds = 0.0
        self._sparse: SparseEncoder | None = None
        self._chunker: Chunker | None = None
        if quantization is not None and quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS} or None, got {quantization!r}")
        self._quantization = quantization  # applies when the collection is created
        if recreate:
            self.backend.drop()
        self._meta = self.backend.metadata()
        if self._meta is not None and encoder is not None:
            self._check_model(model_metadata(encoder))
        elif self._meta is not None and self._model is not None and self._model != self._meta["model"]["name"]:
            self._check_model({"name": self._model})  # fail before loading the model

    # -------------------------------------------------------------- model
    @property
    def metadata(self) -> dict[str, Any] | None:
        """The collection metadata (model, BM25 and chunking settings), ``None`` before the first write."""
        return self._meta

    @property
    def exists(self) -> bool:
        """Whether the collection has been created."""
        return self._meta is not None

    @property
    def encoder(self) -> "LGAnnaEncoder":
        """The encoder: as given, else the collection's model, else the default model (loaded on first use)."""
        if self._encoder is None:
            from .encoder import LGAnnaEncoder

            name = self._model or (self._meta["model"]["name"] if self._meta else None)
            t0 = time.perf_counter()
            encoder = LGAnnaEncoder.from_pretrained(name)
            self.load_seconds += time.perf_counter() - t0
            if self._meta is not None:
                self._check_model(model_metadata(encoder))
            self._encoder = encoder
        return self._encoder

    @property
    def adapter(self) -> Path | None:
        """The folder of the collection's adapter (``lganna-rag adapt``), ``None`` when it has none."""
        record = (self._meta or {}).get("adapter")
        if not record or not isinstance(self.backend, EdgeBackend):
            return None
        return self.backend.dir / "adapters" / record["dir"]

    @property
    def query_encoder(self) -> "LGAnnaEncoder":
        """The encoder of search queries: with the collection's adapter merged in when it has one (unless an
        ``encoder`` was given), else :attr:`encoder`. Document vectors always come from :attr:`encoder`."""
        if self._query_encoder is not None:
            return self._query_encoder
        folder = self.adapter
        if folder is None or self._given_encoder:
            return self.encoder
        from .adapt import load_query_encoder

        if not (folder / "adapter_model.safetensors").is_file():
            raise self.backend.damaged(f"its adapter {folder} is missing; `lganna-rag adapt --undo` returns it to the "
                                       f"base model")
        t0 = time.perf_counter()
        encoder = load_query_encoder(self._meta["model"]["name"], folder)
        self.load_seconds += time.perf_counter() - t0
        self._check_model_of(encoder)
        self._query_encoder = encoder
        return encoder

    def _check_model_of(self, encoder: "LGAnnaEncoder") -> None:
        """Raise :class:`ModelMismatchError` unless ``encoder`` makes vectors of this collection's kind."""
        self._check_model(model_metadata(encoder))

    def _set_adapter(self, record: dict[str, Any] | None, encoder: "LGAnnaEncoder | None") -> None:
        """Make ``record`` (or no adapter) current with one atomic metadata write; ``encoder`` is its query encoder."""
        meta = {k: v for k, v in self._require().items() if k != "adapter"}
        if record is not None:
            meta["adapter"] = record
        self.backend.update_metadata(meta)
        self._meta = meta
        self._query_encoder = encoder

    def adapt(self, minutes: float = 10.0, **options: Any) -> "AdaptReport":
        """Adapt the collection's model to its own chunks without labels (pseudo-queries, the LG-ANNA teacher
        and a LoRA adapter; see :mod:`lganna_rag.adapt`). Searches then embed queries with the adapter;
        document vectors are unchanged. A second call replaces the adapter. Needs the ``train`` extra."""
        from .adapt import adapt_index

        return adapt_index(self, minutes, **options)

    def undo_adapt(self) -> str | None:
        """Return to the base model (exactly its query vectors); returns the removed adapter's name, if any."""
        from .adapt import undo

        return undo(self)

    def _check_model(self, mine: dict[str, Any]) -> None:
        theirs = self._meta["model"] if self._meta else None
        if theirs is None:
            return
        if any(theirs.get(k) != mine.get(k) for k in _MODEL_KEYS):
            given = _describe_model(mine) if "dimension" in mine else f"vectors from model {mine['name']!r}"
            raise ModelMismatchError(
                f"collection {self.collection!r} in {self.backend.describe()} holds {_describe_model(theirs)}; "
                f"the model given makes {given}. Use --model {theirs.get('name')} (Index(model=...)) "
                f"with this collection, pick another collection (--collection NEW), or rebuild it with --recreate."
            )

    def _require(self) -> dict[str, Any]:
        if self._meta is None:
            raise CollectionNotFoundError(self.missing_message())
        return self._meta

    def missing_message(self) -> str:
        """Why this collection cannot be read: it does not exist; names the store's collections that do."""
        store = self.backend.root if isinstance(self.backend, EdgeBackend) else (self.backend.url or "the Qdrant server")
        try:
            others = self.backend.list_collections()
        except Exception:  # noqa: BLE001 - the listing is a hint; the message must not fail
            others = []
        option = "" if self.collection == DEFAULT_COLLECTION else f" --collection {self.collection}"
        have = (f"it holds {', '.join(repr(c) for c in others)} (pick one with --collection NAME)" if others
                else "it holds no collections yet")
        return (f"collection {self.collection!r} does not exist in {store}; {have}; "
                f"or index something first: lganna-rag index PATH{option}")

    @property
    def sparse(self) -> SparseEncoder:
        """The BM25 sparse encoder with this collection's settings."""
        if self._sparse is None:
            settings = self._require()["bm25"]
            self._sparse = SparseEncoder(settings["avg_len"], settings["k"], settings["b"], settings["language"])
        return self._sparse

    def _ensure_collection(self, sample_texts: Sequence[str], chunking: dict[str, int] | None) -> None:
        if self._meta is not None:
            if chunking is not None and self._meta.get("chunking") is None:
                self._meta = {**self._meta, "chunking": chunking}
                self.backend.update_metadata(self._meta)
            return
        from . import __version__

        meta = {
            "format_version": FORMAT_VERSION,
            "model": model_metadata(self.encoder),
            "bm25": {"avg_len": SparseEncoder.estimate_avg_len(sample_texts), "k": 1.2, "b": 0.75, "language": "english"},
            "chunking": chunking,
            "points": None,
            "created_by": f"lganna-rag {__version__}",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if self._quantization:
            meta["quantization"] = self._quantization
        self.backend.create(meta)
        self._meta = meta

    # -------------------------------------------------------------- store bookkeeping
    def _record_count(self, count: int | None) -> None:
        """Record the local store's chunk count in the collection metadata (``None``: a write is under way).

        A later open compares it with what the store counts, so a store that silently lost points (its id
        mappings, say) is reported as damaged instead of answering "no results".
        """
        if not isinstance(self.backend, EdgeBackend) or self._meta is None or self._meta.get("points", -1) == count:
            return
        self._meta = {**self._meta, "points": count}
        self.backend.update_metadata(self._meta)

    def _begin_write(self) -> None:
        """Mark the recorded count stale before the first change of a run (a killed run leaves it unset)."""
        if self._meta is not None and self._meta.get("points") is not None:
            self._record_count(None)

    def _end_write(self) -> None:
        """Record the count once the run's changes are flushed."""
        if self._meta is not None and isinstance(self.backend, EdgeBackend):
            self._record_count(self.backend.count())

    def _checked_count(self, exact: bool = True) -> int:
        """The store's chunk count, checked against the count recorded after the last complete write
        (``exact=False``: from the shard's statistics when they agree with the record, for searches)."""
        recorded = (self._meta or {}).get("points")
        if not exact and isinstance(self.backend, EdgeBackend):
            quick = self.backend.quick_count()
            if recorded is None or quick == recorded:
                return quick
        n = self.backend.count()
        if isinstance(self.backend, EdgeBackend) and recorded is not None and n != recorded:
            raise self.backend.damaged(f"it counts {n} chunks where {recorded} were recorded after the last write "
                                       f"(lost id mappings?)")
        return n

    # -------------------------------------------------------------- writing
    def _write(self, ids: Sequence[str], texts: Sequence[str], payloads: Sequence[dict[str, Any]],
               dense: np.ndarray | None = None) -> float:
        """Encode (unless ``dense`` is given) and upsert one batch; returns the seconds spent in the dense encoder."""
        self._begin_write()
        t0 = time.perf_counter()
        if dense is None:
            dense = self.encoder.encode_documents(list(texts), batch_size=self.batch_size, show_progress_bar=False)
        seconds = time.perf_counter() - t0
        sparse = self.sparse.documents(texts)
        self.backend.upsert(list(zip(ids, dense, sparse, payloads)))
        return seconds

    def add_texts(
        self,
        texts: Sequence[str],
        metadatas: Sequence[dict[str, Any]] | None = None,
        ids: Sequence[str | int] | None = None,
        vectors: np.ndarray | None = None,
    ) -> list[str]:
        """Embed and store ``texts`` as they are (no chunking); returns their point ids.

        ``metadatas`` become payload fields. ``ids`` that are not UUIDs are mapped to UUIDv5 and kept
        in the payload as ``doc_id``; without ids, a text's id is derived from its content and metadata,
        so adding the same text twice stores it once. ``vectors`` are ready document vectors from this
        collection's model (e.g. from ``lganna-rag embed``); without them the texts are encoded here.
        """
        from .encoder import check_texts

        texts = check_texts(texts)
        if vectors is not None:
            vectors = np.asarray(vectors, dtype=np.float32)
            if vectors.shape != (len(texts), self.encoder.dimension):
                raise ValueError(f"vectors have shape {vectors.shape}; expected ({len(texts)}, {self.encoder.dimension})")
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"got {len(metadatas)} metadatas for {len(texts)} texts")
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"got {len(ids)} ids for {len(texts)} texts")
        if not texts:
            return []
        payloads, point_ids = [], []
        for i, text in enumerate(texts):
            meta = dict(metadatas[i]) if metadatas is not None else {}
            payload = {**meta, "text": text}
            if ids is not None:
                pid = _point_id(ids[i])
                if pid != str(ids[i]):
                    payload["doc_id"] = ids[i]
            else:
                key = json.dumps(meta, sort_keys=True, default=str)
                pid = str(uuid.uuid5(ID_NAMESPACE, f"text\x00{content_hash(text)}\x00{key}"))
            payloads.append(payload)
            point_ids.append(pid)
        self._ensure_collection(texts[:WRITE_BATCH], None)
        for start in range(0, len(texts), WRITE_BATCH):
            end = start + WRITE_BATCH
            self._write(point_ids[start:end], texts[start:end], payloads[start:end],
                        vectors[start:end] if vectors is not None else None)
        self.backend.flush()
        self.backend.optimize()
        self._end_write()
        return point_ids

    def _chunking(self, chunk_size: int | None, overlap: int | None) -> dict[str, int]:
        """Chunk settings: the collection's (given values must equal them), else the given ones or the
        defaults within the model's limit. Only a new collection needs the model loaded here."""
        saved = (self._meta or {}).get("chunking")
        if saved:
            for name, key, given in (("chunk size", "size", chunk_size), ("overlap", "overlap", overlap)):
                if given is not None and saved[key] != given:
                    raise IndexStoreError(
                        f"collection {self.collection!r} was built with {name} {saved[key]}; pass the same value "
                        f"(or leave it out), or rebuild the collection with --recreate"
                    )
            return {"size": saved["size"], "overlap": saved["overlap"]}
        enc = self.encoder
        specials = len(enc.tokenize([""])[0][0])
        limit = enc.config.max_length - specials - 2
        size = chunk_size if chunk_size is not None else min(DEFAULT_CHUNK_SIZE, limit)
        if size > limit:
            raise ValueError(
                f"chunk size {size} is more than model {enc.name!r} can embed ({enc.config.max_length} tokens "
                f"including {specials} special); use a chunk size of at most {limit}"
            )
        ov = overlap if overlap is not None else min(DEFAULT_OVERLAP, size // 4)
        self._chunker = Chunker(enc.tokenizer, size, ov)  # validates the pair
        return {"size": size, "overlap": ov, "model_limit": limit}  # model_limit: the most text tokens a chunk can hold

    def _get_chunker(self, chunking: dict[str, int]) -> Chunker:
        """A chunker with these settings (loads the model on first use)."""
        if self._chunker is None or (self._chunker.size, self._chunker.overlap) != (chunking["size"], chunking["overlap"]):
            self._chunker = Chunker(self.encoder.tokenizer, chunking["size"], chunking["overlap"])
        return self._chunker

    def _file_state(self) -> tuple[dict[str, dict[str, dict[str, Any]]], int]:
        """Existing chunks of every indexed file, by file identity (resolved absolute path):
        ``{path: {id: payload fields}}``, and the number of points listed (files' and others').

        Chunks written before files had one identity (no ``path`` field: recorded by ``(root, source)``)
        are found by the path they name, so re-indexing such a file replaces them too.
        """
        state: dict[str, dict[str, dict[str, Any]]] = {}
        listed = 0
        if self._meta is None:
            return state, 0
        for pid, p in self.backend.scroll(_STATE_FIELDS):
            listed += 1
            ident = p.get("path")
            if not ident:
                if not p.get("root") or p.get("source") is None:
                    continue  # add_texts points: not files
                ident = _legacy_identity(p["root"], p["source"])
            state.setdefault(ident, {})[pid] = p
        return state, listed

    def _verify(self, state: dict[str, dict[str, dict[str, Any]]], listed: int, report: IndexReport) -> None:
        """Check what an index run relies on before trusting the store: every point is listed, has its
        payload, and the dense vectors answer a query. Points whose payload was lost are deleted (their
        files are then incomplete and get re-indexed); anything else is a :class:`StoreDamagedError`."""
        total = self._checked_count()
        ghosts = self.backend.count_empty("text")
        if ghosts:
            self._begin_write()
            self.backend.delete_empty("text")
            report.repairs.append(f"deleted {ghosts} chunks whose payload was lost; their files are re-indexed")
            total = self.backend.count()
            for ident in [i for i, pts in state.items() if any(not p for p in pts.values())]:
                state[ident] = {pid: p for pid, p in state[ident].items() if p}
        if total != listed - ghosts:
            raise self.backend.damaged(f"it counts {total} chunks but lists {listed - ghosts}")
        if total:
            self._probe(total)

    def _probe(self, total: int) -> None:
        """A dense query must return min(total, 10) chunks, each with its text, or the store is damaged."""
        dim = int(self._require()["model"]["dimension"])
        want = min(total, 10)
        hits = self.backend.search(np.full(dim, dim ** -0.5, dtype=np.float32), None, want, None, want)
        if len(hits) < want or any("text" not in p for _, _, p in hits):
            raise self.backend.damaged(f"a query over {total} chunks returned {len(hits)} (or chunks without "
                                       f"their text)")

    def add_files(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        chunk_size: int | None = None,
        overlap: int | None = None,
        max_file_mb: float | None = 20.0,
        prune: bool | None = None,
        progress: Callable[[IndexProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> IndexReport:
        """Index folders, files and glob patterns incrementally; see the module docstring for guarantees.

        A file is one entry whatever root reached it (a folder, a subfolder, the file itself, a glob):
        its identity is its resolved absolute path, so re-indexing it replaces its chunks. Unchanged
        files (same SHA-256, complete chunk set) are skipped; changed files get their new chunks
        written, then their stale chunks deleted; files that became empty, binary or too large lose
        theirs. ``prune`` decides what happens to indexed files under a walked folder that this run did
        not index: by default (``None``) those that no longer exist lose their chunks, and those still
        there (left out by ``include``/``exclude``, or now skipped) keep them and are listed in
        ``report.kept``; ``True`` removes both; ``False`` removes neither. Files that fail to read, and
        every file under a folder that cannot be read, keep their chunks. ``should_stop`` is polled after
        every step; when it returns True the run stops cleanly (``report.interrupted``), and the next run
        resumes. The store lock is taken first (:class:`~lganna_rag.stores.StoreInUseError` if another
        process holds it). Raises ``FileNotFoundError`` for a path that does not exist.
        """
        t_start = time.perf_counter()
        loaded_before = self.load_seconds
        report = IndexReport()
        found = discover(paths, include, exclude)
        self.backend.lock()
        meta = self.backend.metadata()  # re-read under the lock: another process may have created it
        if meta != self._meta:
            self._meta, self._sparse = meta, None
            if meta is not None and self._encoder is not None:
                self._check_model(model_metadata(self._encoder))
        chunking = self._chunking(chunk_size, overlap)
        if self._meta is not None and self._meta.get("chunking") is None:
            self._ensure_collection([], chunking)
        state, listed = self._file_state()
        if self._meta is not None:
            self._verify(state, listed, report)
        prog = IndexProgress(files_total=len(found.files), started=t_start)
        for s in found.skipped:
            (report.failed if s.failed else report.skipped).append(s)
        folder_roots = {safe_name(r.as_posix()) for r in found.folder_roots}

        # chunks waiting to be written, and per file what remains to do once they are
        batch: list[tuple[str, str, dict[str, Any], str]] = []
        pending: dict[str, dict[str, Any]] = {}

        def finish(key: str) -> None:
            """All new chunks of a file are written: update moved chunks, then delete stale ones."""
            job = pending.pop(key)
            if job["repayload"] or job["stale"]:
                self._begin_write()
            for pid, fields in job["repayload"]:
                self.backend.set_payload(pid, fields)
            if job["stale"]:
                self.backend.delete(ids=job["stale"])
                report.chunks_deleted += len(job["stale"])
            report.indexed.append(job["source"])

        def write_batch(final: bool = False) -> None:
            """Write queued chunks in steps of WRITE_BATCH (all of them if ``final``), polling ``should_stop``."""
            nonlocal batch
            while len(batch) >= WRITE_BATCH or (final and batch):
                step, batch = batch[:WRITE_BATCH], batch[WRITE_BATCH:]
                self._ensure_collection([b[1] for b in step], chunking)
                report.encode_seconds += self._write([b[0] for b in step], [b[1] for b in step], [b[2] for b in step])
                report.chunks_written += len(step)
                for *_, key in step:
                    pending[key]["remaining"] -= 1
                for key in [k for k, job in pending.items() if job["remaining"] == 0]:
                    finish(key)
                prog.chunks_written, prog.chunks_pending, prog.event = report.chunks_written, len(batch), "batch"
                prog.load_seconds = self.load_seconds - loaded_before
                if progress:
                    progress(prog)
                if should_stop is not None and should_stop():
                    report.interrupted = True
                    return

        seen: set[str] = set()
        policy_skips: dict[str, str] = {}
        for ref in found.files:
            key = ref.identity
            seen.add(key)
            prog.current = ref.source
            loaded = load_file(ref, max_file_mb)
            existing = state.get(key, {})
            if isinstance(loaded, Skip):
                (report.failed if loaded.failed else report.skipped).append(loaded)
                if not loaded.failed:
                    policy_skips[key] = loaded.reason
            else:
                root, source = _placement(ref, existing)
                fields = {"path": key, "root": root, "source": source}
                report.warnings.extend((source, w) for w in loaded.warnings)
                if _is_complete(existing, loaded.file_hash, fields):
                    report.unchanged.append(source)
                else:
                    self._plan_file(key, fields, loaded, existing, self._get_chunker(chunking), batch, pending, report)
                    if pending[key]["remaining"] == 0:
                        finish(key)
            prog.files_done += 1
            prog.event = "file"
            if progress:
                progress(prog)
            write_batch()
            if report.interrupted or (should_stop is not None and should_stop()):
                report.interrupted = True
                break
        if not report.interrupted:
            write_batch(final=True)
        # Deletions (skipped when interrupted: the next run does them).
        if not report.interrupted:
            gone = {key: f"now skipped: {reason}" for key, reason in policy_skips.items()}
            blocked = [safe_name(p.as_posix()) for p in found.failed_folders]
            for key in sorted(state):
                root = next((r for r in folder_roots if _inside(key, r)), None)
                if key in seen or key in gone or root is None or any(_inside(key, b) for b in blocked):
                    continue
                shown = key[len(root) + 1:]
                if not _exists(key):
                    if prune is not False:
                        gone[key] = "no longer exists"
                elif prune:
                    gone[key] = "not part of this run (--include/--exclude, or skipped); removed by --prune"
                else:
                    report.kept.append(shown)
            for key, reason in sorted(gone.items()):
                if state.get(key):
                    self._begin_write()
                    self.backend.delete(ids=list(state[key]))
                    report.chunks_deleted += len(state[key])
                    root = next((r for r in folder_roots if _inside(key, r)), None)
                    shown = key[len(root) + 1:] if root else next(iter(state[key].values())).get("source", key)
                    report.pruned.append(shown)
                    report.removed.append((shown, reason))
        self.backend.flush()
        if report.chunks_written or report.chunks_deleted:
            self.backend.optimize()
        self._end_write()
        report.seconds = time.perf_counter() - t_start
        report.load_seconds = self.load_seconds - loaded_before
        prog.event = "done"
        if progress:
            progress(prog)
        return report

    def _plan_file(self, key: str, fields: dict[str, str], loaded: LoadedFile, existing: dict[str, dict[str, Any]],
                   chunker: Chunker, batch: list, pending: dict, report: IndexReport) -> None:
        """Queue the chunks of a new or changed file that are not in the store yet."""
        chunks = chunker.split(loaded.text)
        job: dict[str, Any] = {"source": fields["source"], "remaining": 0, "repayload": [], "stale": []}
        new_ids = set()
        for c in chunks:
            pid = chunk_id(key, c.index, c.text)
            new_ids.add(pid)
            wanted = {**fields, "chunk": c.index, "n_chunks": len(chunks), "start": c.start, "end": c.end,
                      "file_hash": loaded.file_hash}
            old = existing.get(pid)
            if old is None:
                batch.append((pid, c.text, {**wanted, "text": c.text}, key))
                job["remaining"] += 1
            else:
                report.chunks_reused += 1
                if any(old.get(f) != v for f, v in wanted.items()):
                    job["repayload"].append((pid, wanted))
        job["stale"] = [pid for pid in existing if pid not in new_ids]
        pending[key] = job

    # -------------------------------------------------------------- reading
    def search(
        self,
        query: str,
        k: int = 5,
        *,
        task: "Task | str | None" = None,
        examples: Iterable[Sequence[str]] | None = None,
        where: Where | None = None,
        mode: str = "hybrid",
    ) -> list[Hit]:
        """The ``k`` best chunks for ``query``.

        ``mode`` is ``hybrid`` (the default: dense and BM25 rankings fused by reciprocal rank fusion, so
        ``Hit.score`` is an RRF score, not a cosine), ``dense`` (the embedding model alone; ``Hit.score`` is
        the cosine similarity) or ``sparse`` (BM25 alone). In ``dense`` and ``hybrid`` the query gets
        ``task``'s instruction and ``examples``. ``where`` filters on payload fields:
        ``{"source": "guide/intro.md"}`` or a list of accepted values.
        """
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self._require()
        vector = self.query_encoder.encode_queries([query], task=task, examples=examples)[0] if mode != "sparse" else None
        return self.search_by_vector(vector, k, where=where, text=query if mode != "dense" else None)

    def search_by_vector(self, vector: np.ndarray | Sequence[float] | None, k: int = 5, *,
                         where: Where | None = None, text: str | None = None) -> list[Hit]:
        """Search with a ready query vector (dense), ``text`` (BM25), or both (hybrid, RRF)."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        meta = self._require()
        self._checked_count(exact=False)  # a store that lost points is an error, not "no results"
        if vector is not None:
            vector = np.asarray(vector, dtype=np.float32)
            if vector.shape != (meta["model"]["dimension"],):
                raise ValueError(f"query vector has shape {vector.shape}; this collection holds "
                                 f"{meta['model']['dimension']}-d vectors")
        sparse = self.sparse.query(text) if text is not None else None
        if sparse is not None and not sparse[0]:  # only stopwords: nothing for BM25 to match
            if vector is None:
                return []
            sparse = None
        if vector is None and sparse is None:
            raise ValueError("give a query vector, a query text, or both")
        raw = self.backend.search(vector, sparse, k, where, max(MIN_PREFETCH, 2 * k))
        if len(raw) < k:
            self._check_short_result(raw, k, where, dense=vector is not None)
        if any("text" not in p for _, _, p in raw):
            raise self.backend.damaged("chunks without their payload were found (ghost points)")
        return [Hit(pid, score, p.get("text", ""), p.get("source"), p.get("chunk"), p.get("start"), p.get("end"), p)
                for pid, score, p in raw]

    def payload_keys(self, sample: int = 256) -> list[str]:
        """Payload keys of the collection's chunks (from the first ``sample`` points): what ``where`` can filter on."""
        keys: set[str] = set()
        if self._meta is None:
            return []
        for i, (_, p) in enumerate(self.backend.scroll(True)):
            keys.update(p)
            if i + 1 >= sample:
                break
        return sorted(keys)

    def _check_short_result(self, raw: list, k: int, where: Where | None, *, dense: bool) -> None:
        """Fewer than ``k`` hits: an unknown ``where`` key is a ValueError; a dense ranking that misses
        chunks the collection holds means the store is damaged (never a silent short answer)."""
        if where:
            unknown = [key for key in where if self.backend.count({key: where[key]}) == 0
                       and self.backend.count_empty(key) == self.backend.count()]
            if unknown:
                raise ValueError(f"unknown filter key {unknown[0]!r}: no chunk has it; the chunks' payload keys "
                                 f"are {', '.join(self.payload_keys())}")
        if dense:
            expected = min(k, self.backend.count(where))
            if len(raw) < expected:
                raise self.backend.damaged(f"a search returned {len(raw)} of the {expected} chunks it should have "
                                           f"(unreadable vectors)")

    def count(self, where: Where | None = None) -> int:
        """Number of chunks (optionally those matching ``where``); 0 if the collection does not exist."""
        if self._meta is None:
            return 0
        return self.backend.count(where) if where else self._checked_count()

    def files(self) -> dict[str, int]:
        """Chunk count per indexed file (its resolved absolute path); texts added without a source are not listed."""
        out: dict[str, int] = {}
        if self._meta is None:
            return out
        for _, p in self.backend.scroll(["path", "root", "source"]):
            if p.get("source") is None:
                continue
            name = _point_file(p) or str(p["source"])
            out[name] = out.get(name, 0) + 1
        return out

    def delete(self, ids: Sequence[str | int] | None = None, *, where: Where | None = None,
               paths: Sequence[str | os.PathLike] | None = None) -> int:
        """Delete chunks by point id, by payload filter, or of files/folders at ``paths``; returns how many."""
        if sum(x is not None for x in (ids, where, paths)) != 1:
            raise ValueError("give exactly one of ids, where or paths")
        if self._meta is None:
            return 0
        before = self._checked_count()
        self._begin_write()
        if ids is not None:
            self.backend.delete(ids=[_point_id(i) for i in ids])
        elif where is not None:
            if not where:
                raise ValueError("where={} would delete everything; use drop() to delete the collection")
            self.backend.delete(where=where)
        else:
            targets = [file_identity(Path(p).expanduser()) for p in paths or []]
            doomed = [pid for pid, p in self.backend.scroll(["path", "root", "source"]) if _under(p, targets)]
            self.backend.delete(ids=doomed)
        self.backend.flush()
        self._end_write()
        return before - self.backend.count()

    def check(self, repair: bool = False, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Verify the collection's store; with ``repair``, rebuild a damaged one from what can be read.

        Checks: every point is listed and has its payload, every stored vector reads back, a dense query
        answers, every file's chunks form one complete version. The repair re-embeds the text of every
        readable chunk (same model and BM25 settings) into a new shard, swapped in when complete; points
        whose payload was lost are dropped (``lganna-rag index`` re-indexes their files). Returns
        ``{"chunks", "files", "problems", "incomplete_files", "repaired", "lost"}``.
        """
        self._require()
        problems: list[str] = []
        incomplete: list[str] = []
        total = listed = 0
        files: dict[str, list[dict[str, Any]]] = {}
        try:
            total = self.backend.count()
            recorded = (self._meta or {}).get("points")
            if isinstance(self.backend, EdgeBackend) and recorded is not None and recorded != total:
                problems.append(f"the store counts {total} chunks where {recorded} were recorded after the last write")
            for _, p in self.backend.scroll(_STATE_FIELDS):
                listed += 1
                ident = _point_file(p)
                if ident is not None:
                    files.setdefault(ident, []).append(p)
            if total != listed:
                problems.append(f"the store counts {total} chunks but lists {listed}")
            ghosts = self.backend.count_empty("text")
            if ghosts:
                problems.append(f"{ghosts} chunks lost their payload (text, source)")
            if isinstance(self.backend, EdgeBackend):
                dim = int(self._require()["model"]["dimension"])
                bad = sum(1 for _, d, sp in self.backend.vector_sizes() if d != dim or sp < 0)
                if bad:
                    problems.append(f"{bad} chunks have unreadable vectors")
            if total:
                self._probe(total)
        except IndexStoreError as exc:
            if not isinstance(exc, StoreDamagedError):
                raise
            problems.append(str(exc).split("; repair it with")[0])
        for ident, pts in sorted(files.items()):
            n = {p.get("n_chunks") for p in pts}
            if len(n) != 1 or len(pts) != next(iter(n)) or len({p.get("file_hash") for p in pts}) != 1:
                incomplete.append(ident)
        result = {"chunks": total, "files": len(files), "problems": problems, "incomplete_files": incomplete,
                  "repaired": False, "lost": 0}
        if repair and problems:
            kept, lost = self._rebuild(progress)
            result.update(repaired=True, lost=lost, chunks=kept)
        return result

    def _rebuild(self, progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
        """Re-embed every readable chunk into a new shard; returns (chunks kept, chunks lost)."""
        if not isinstance(self.backend, EdgeBackend):
            raise IndexStoreError(f"{self.backend.describe()} cannot be repaired here; {self.backend.repair_hint()}")
        try:
            rows = [(pid, p) for pid, p in self.backend.scroll(True)]
        except StoreDamagedError:
            raise StoreDamagedError(
                f"the store at {self.backend.dir} is damaged beyond repair (its chunks cannot be read); rebuild it "
                f"from your files with `lganna-rag index PATHS --recreate --path {self.backend.root}`"
            ) from None
        good = [(pid, p) for pid, p in rows if isinstance(p.get("text"), str)]
        encoder, sparse = self.encoder, self.sparse

        def points() -> Iterable[tuple[str, np.ndarray, tuple[list[int], list[float]], dict[str, Any]]]:
            for start in range(0, len(good), WRITE_BATCH):
                step = good[start:start + WRITE_BATCH]
                texts = [p["text"] for _, p in step]
                dense = encoder.encode_documents(texts, batch_size=self.batch_size, show_progress_bar=False)
                yield from zip([pid for pid, _ in step], dense, sparse.documents(texts), [p for _, p in step])
                if progress:
                    progress(min(start + WRITE_BATCH, len(good)), len(good))

        recorded = (self._meta or {}).get("points")
        self._record_count(None)
        kept = self.backend.replace_shard(points())
        self._end_write()
        return kept, max(len(rows), recorded or 0) - len(good)

    def drop(self) -> None:
        """Delete the whole collection."""
        self.backend.drop()
        self._meta = None
        self._sparse = None

    def info(self) -> dict[str, Any]:
        """Model, settings, chunk and file counts of this collection, and the store's other collections."""
        files = self.files()
        return {
            "backend": self.backend.kind,
            "store": str(self.backend.root) if isinstance(self.backend, EdgeBackend) else self.backend.url,
            "collection": self.collection,
            "exists": self._meta is not None,
            "collections": self.backend.list_collections(),
            "model": (self._meta or {}).get("model"),
            "bm25": (self._meta or {}).get("bm25"),
            "chunking": (self._meta or {}).get("chunking"),
            "adapter": (self._meta or {}).get("adapter"),
            "chunks": self.count(),
            "files": len(files),
            "disk_bytes": self.backend.disk_bytes() if self._meta is not None else 0,
        }

    def close(self) -> None:
        """Flush and release the store."""
        self.backend.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Index({self.backend.describe()}, model={(self._meta or {}).get('model', {}).get('name', self._model)!r})"


def _point_id(value: str | int) -> str:
    """A Qdrant point id for a user id: UUIDs and non-negative ints as they are, anything else via UUIDv5."""
    if isinstance(value, int) and value >= 0:
        return str(uuid.UUID(int=value))
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return str(uuid.uuid5(ID_NAMESPACE, f"id\x00{value}"))


def _point_file(payload: dict[str, Any]) -> str | None:
    """The identity of the file a point belongs to (``None`` for texts added without a file)."""
    if payload.get("path"):
        return payload["path"]
    if payload.get("root") and payload.get("source") is not None:
        return _legacy_identity(payload["root"], payload["source"])
    return None


def _under(payload: dict[str, Any], targets: Sequence[str]) -> bool:
    """Whether a point's file is one of ``targets`` (identities) or inside one of them."""
    path = _point_file(payload)
    return path is not None and any(_inside(path, t) for t in targets)


def _is_complete(existing: dict[str, dict[str, Any]], file_hash: str, fields: dict[str, str]) -> bool:
    """Whether a file's points are exactly chunks ``0..n-1`` of the version with ``file_hash``, recorded
    under this identity and placement (``fields``: path, root, source)."""
    if not existing:
        return False
    n = len(existing)
    chunks = sorted(p.get("chunk", -1) for p in existing.values())
    return (all(p.get("file_hash") == file_hash and p.get("n_chunks") == n and
                all(p.get(f) == v for f, v in fields.items()) for p in existing.values())
            and chunks == list(range(n)))


def _legacy_identity(root: str, source: str) -> str:
    """The identity of a chunk recorded by ``(root, source)`` only (stores written before ``path``)."""
    joined = os.path.normpath(os.path.join(path_from_safe_name(root), path_from_safe_name(source)))
    return file_identity(joined)


def _inside(path: str, root: str) -> bool:
    """Whether the absolute posix ``path`` is ``root`` or below it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def _exists(identity: str) -> bool:
    """Whether the file still exists; ``True`` when that cannot be told (a permission error keeps chunks)."""
    try:
        os.lstat(path_from_safe_name(identity))
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True


def _placement(ref: FileRef, existing: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """The ``(root, source)`` a file is shown under: that of the broadest folder it was indexed through.

    Indexing a file or a subfolder again keeps the placement it has under a folder above it (so its
    ``source`` and ``--filter source=...`` stay the same); indexing a folder above it moves it there.
    """
    root = safe_name(ref.root.as_posix())
    if not existing:
        return root, ref.source
    old = next(iter(existing.values()))
    old_root, old_source = old.get("root"), old.get("source")
    if old_root and old_source is not None and _inside(ref.identity, old_root) and not (
            old_root != root and _inside(old_root, root)):
        return old_root, old_source
    return root, ref.source
