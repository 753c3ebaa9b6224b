"""``Index``: a searchable collection of document chunks in Qdrant (dense, BM25 and hybrid search).

A facade over the rooms that do the work: :mod:`lganna_rag.stores` (the Qdrant backends: in-process
``qdrant-edge-py`` under ``./.lganna/<collection>/``, or a server through ``qdrant-client``),
:mod:`lganna_rag.collection` (what a collection records: its model, settings, counts, adapter; its checks and
repair), :mod:`lganna_rag.sync` (incremental, crash-safe indexing of files and folders) and
:mod:`lganna_rag.bm25` (the sparse vectors). Every point is one chunk: a dense vector from
:class:`~lganna_rag.encoder.LGAnnaEncoder`, a BM25 sparse vector and a payload (``text``, ``path``, ``source``,
``root``, ``chunk``, ``n_chunks``, ``start``, ``end``, ``file_hash``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from .bm25 import SparseEncoder
from .collection import (DEFAULT_COLLECTION, FORMAT_VERSION, WRITE_BATCH, Collection, CollectionNotFoundError,
                         ModelMismatchError, check, explain_short_result, model_metadata, payload_keys, rebuild,
                         recorded_precision)
from .filters import check_where
from .stores import DEFAULT_PATH, DEFAULT_WAIT, QUANTIZATIONS, ClientBackend, EdgeBackend, IndexStoreError, Store, Where
from .sync import (DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP, STATE_FIELDS, ChunkWriter, FolderSync, IndexProgress,
                   IndexReport, add_texts, chunk_settings, delete_chunks, files_of, outside_root, point_file)

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import LGAnnaEncoder
    from .prompts import Task

__all__ = ["Index", "Hit", "IndexReport", "IndexProgress", "SparseEncoder", "ModelMismatchError",
           "CollectionNotFoundError", "IndexStoreError", "model_metadata", "MODES", "DEFAULT_COLLECTION",
           "DEFAULT_CHUNK_SIZE", "DEFAULT_OVERLAP", "FORMAT_VERSION", "WRITE_BATCH"]

#: How many candidates each side contributes to a hybrid (RRF) search, at least.
MIN_PREFETCH = 100
MODES = ("dense", "sparse", "hybrid")
#: Extra hits asked of the engine so that equal scores (common in RRF) are ordered by id, not by the engine's
#: internal order (which changes when the shard is reopened).
_TIE_EXTRA = 10
#: A dense hit scoring outside [-1, 1] by more than this is a damaged vector, never a cosine to show.
_COSINE_SLACK = 1e-3


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


class Index:
    """A searchable collection of document chunks in Qdrant.

    Example:
        >>> from lganna_rag import Index
        >>> index = Index("./.lganna", collection="docs")          # local store; or url="http://..."
        >>> report = index.add_files(["./docs"])                    # incremental: re-runs skip unchanged files
        >>> hits = index.search("how do I rotate the API key?", k=5, mode="hybrid")

    ``model`` is a registered name, directory or hub id (``None``: the model the collection was built with,
    else the default model); ``encoder`` reuses a loaded :class:`LGAnnaEncoder`; ``precision`` and ``threads``
    are passed to :meth:`LGAnnaEncoder.from_pretrained` when the model is loaded here (``precision=None``: the
    precision the collection's vectors were made at, else the CPU default). ``url``/``api_key`` (or
    ``client``) select a Qdrant server instead of the local store at ``path``; a local store shared with other
    processes is waited for up to ``wait`` seconds. ``recreate=True`` deletes the collection first.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, collection: str = DEFAULT_COLLECTION,
                 model: str | os.PathLike | None = None, encoder: "LGAnnaEncoder | None" = None,
                 url: str | None = None, api_key: str | None = None, client: Any = None, timeout: float = 10.0,
                 batch_size: int = 32, recreate: bool = False, quantization: str | None = None,
                 precision: str | None = None, threads: int | None = None, wait: float = DEFAULT_WAIT,
                 holder: str | None = None) -> None:
        """Open (lazily create) a collection; raises :class:`IndexStoreError` for an unusable store."""
        if quantization is not None and quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS} or None, got {quantization!r}")
        if url or client is not None:
            if path is not None:
                raise ValueError("give either path= (local store) or url=/client= (Qdrant server), not both")
            self.backend: Store = ClientBackend(collection, url=url, api_key=api_key, timeout=timeout, client=client)
        else:
            self.backend = EdgeBackend(path if path is not None else DEFAULT_PATH, collection, wait=wait, holder=holder)
        self.collection = collection
        self.batch_size = batch_size
        self.precision, self.threads = precision, threads
        self._model = str(model) if model is not None else None
        self._encoder = encoder
        self._given_encoder = encoder is not None
        #: Queries' encoder when the collection has an adapter (``lganna-rag adapt``) and the adapter it was made for.
        self._query_encoder: tuple[Path, "LGAnnaEncoder"] | None = None
        #: Seconds this index spent loading its model (``add_files`` rates leave them out).
        self.load_seconds = 0.0
        if recreate:
            self.backend.drop()
        self.record = Collection(self.backend, collection)
        self.writer = ChunkWriter(self.record, lambda: self.encoder, batch_size=batch_size, quantization=quantization)
        if self.record.exists and encoder is not None:
            self.record.check_model(model_metadata(encoder))
        elif self.record.exists and self._model is not None:
            self.record.check_model({"name": self._model})  # fail before loading the model

    # -------------------------------------------------------------- model
    @property
    def metadata(self) -> dict[str, Any] | None:
        """The collection metadata (model, BM25 and chunking settings), ``None`` before the first write."""
        return self.record.meta

    @property
    def exists(self) -> bool:
        """Whether the collection has been created."""
        return self.record.exists

    def require(self) -> dict[str, Any]:
        """The collection metadata; :class:`CollectionNotFoundError` (naming the store's collections) if none."""
        return self.record.require()

    def missing_message(self) -> str:
        """Why this collection cannot be read: it does not exist; names the store's collections that do."""
        return self.record.missing_message()

    def _load(self, name: str | None, **options: Any) -> "LGAnnaEncoder":
        from .encoder import LGAnnaEncoder

        t0 = time.perf_counter()
        precision = self.precision if self.precision is not None else recorded_precision(self.record.meta)
        encoder = LGAnnaEncoder.from_pretrained(name, precision=precision, threads=self.threads, **options)
        self.load_seconds += time.perf_counter() - t0
        return encoder

    @property
    def encoder(self) -> "LGAnnaEncoder":
        """The encoder: as given, else the collection's model, else the default model (loaded on first use)."""
        if self._encoder is None:
            encoder = self._load(self._model or (self.record.meta["model"]["name"] if self.record.meta else None))
            self.check_model(encoder)
            self._encoder = encoder
        return self._encoder

    def check_model(self, encoder: "LGAnnaEncoder") -> None:
        """Raise :class:`ModelMismatchError` unless ``encoder`` makes vectors of this collection's kind."""
        self.record.check_model(model_metadata(encoder))

    @property
    def adapters_dir(self) -> Path | None:
        """The folder that holds this collection's adapters (``None`` for a server's collection)."""
        return self.record.adapters_dir

    @property
    def adapter(self) -> Path | None:
        """The folder of the collection's adapter (``lganna-rag adapt``), ``None`` when it has none."""
        return self.record.adapter_dir()

    @property
    def query_encoder(self) -> "LGAnnaEncoder":
        """The encoder of search queries: with the collection's adapter merged in when it has one (unless an
        ``encoder`` was given), else :attr:`encoder`. Document vectors always come from :attr:`encoder`."""
        folder = self.adapter
        if folder is None or self._given_encoder:
            return self.encoder
        if self._query_encoder is not None and self._query_encoder[0] == folder:
            return self._query_encoder[1]
        if not (folder / "adapter_model.safetensors").is_file():
            raise self.backend.damaged(f"its adapter {folder} is missing; `lganna-rag adapt --undo` returns it to the "
                                       f"base model")
        encoder = self._load(self.require()["model"]["name"], adapter=folder, merge_adapter=True)
        self.check_model(encoder)
        self._query_encoder = (folder, encoder)
        return encoder

    def set_adapter(self, record: dict[str, Any] | None, encoder: "LGAnnaEncoder | None" = None) -> None:
        """Make ``record`` (or no adapter) current with one atomic metadata write; ``encoder`` is its query encoder."""
        self.record.update(adapter=record)
        folder = self.adapter
        self._query_encoder = (folder, encoder) if folder is not None and encoder is not None else None

    @property
    def sparse(self) -> SparseEncoder:
        """The BM25 sparse encoder with this collection's settings."""
        return self.writer.sparse

    # -------------------------------------------------------------- writing
    def add_texts(self, texts: Sequence[str], metadatas: Sequence[dict[str, Any]] | None = None,
                  ids: Sequence[str | int] | None = None, vectors: np.ndarray | None = None) -> list[str]:
        """Embed and store ``texts`` as they are (no chunking); returns their point ids.

        ``metadatas`` become payload fields. ``ids`` that are not UUIDs are mapped to UUIDv5 and kept
        in the payload as ``doc_id``; without ids, a text's id is derived from its content and metadata,
        so adding the same text twice stores it once. ``vectors`` are ready document vectors from this
        collection's model (e.g. from ``lganna-rag embed``); without them the texts are encoded here.
        """
        return add_texts(self.writer, texts, metadatas, ids, vectors)

    def add_files(self, paths: Sequence[str | os.PathLike], *, include: Sequence[str] = (),
                  exclude: Sequence[str] = (), chunk_size: int | None = None, overlap: int | None = None,
                  max_file_mb: float | None = 20.0, prune: bool | None = None,
                  progress: Callable[[IndexProgress], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> IndexReport:
        """Index folders, files and glob patterns incrementally; unchanged files are skipped, changed files get
        their new chunks and lose their stale ones (the rules are in :mod:`lganna_rag.sync`). ``prune``: what
        happens to indexed files under a walked folder that this run did not index (``None``: those that no
        longer exist lose their chunks, the others are listed in ``report.kept``; ``True``: both removed;
        ``False``: neither). ``should_stop`` is polled after every step (a stopped run is resumed by the next).
        Takes the store's writer lock (:class:`~lganna_rag.stores.StoreInUseError` while another run writes);
        searches from other processes go on meanwhile. ``FileNotFoundError`` for a path that does not exist.
        """
        started, loaded_before = time.perf_counter(), self.load_seconds
        self.backend.lock()
        try:
            with self.backend.session(open_shard=False):
                self.record.meta = self.backend.metadata()  # re-read under the lock: another process may have made it
            if self.record.exists and self._encoder is not None:
                self.check_model(self._encoder)
            chunking = chunk_settings(self.record, lambda: self.encoder, chunk_size, overlap)
            if self.record.exists and self.record.meta.get("chunking") is None:
                self.writer.ensure([], chunking)
            sync = FolderSync(self.writer, chunking=chunking, progress=progress, should_stop=should_stop,
                              load_seconds=lambda: self.load_seconds, loaded_before=loaded_before)
            return sync.run(paths, include, exclude, max_file_mb, prune, started)
        finally:
            self.backend.unlock()

    # -------------------------------------------------------------- reading
    def search(self, query: str, k: int = 5, *, task: "Task | str | None" = None,
               examples: Iterable[Sequence[str]] | None = None, where: Where | None = None,
               mode: str = "hybrid") -> list[Hit]:
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
        self._refreshed()
        vector = self.query_encoder.encode_queries([query], task=task, examples=examples)[0] if mode != "sparse" else None
        return self.search_by_vector(vector, k, where=where, text=query if mode != "dense" else None)

    def _refreshed(self) -> dict[str, Any]:
        """The metadata, re-read if another process may have changed it (an index or adapt run) or made it."""
        if not self.record.exists:
            self.record.meta = self.backend.metadata()
            self.require()
        with self.backend.session():
            self.record.refresh()
            return self.require()

    def search_by_vector(self, vector: np.ndarray | Sequence[float] | None, k: int = 5, *,
                         where: Where | None = None, text: str | None = None) -> list[Hit]:
        """Search with a ready query vector (dense), ``text`` (BM25), or both (hybrid, RRF)."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        where = check_where(where)
        with self.backend.session():
            meta = self._refreshed()
            vector = _query_vector(vector, int(meta["model"]["dimension"]))
            sparse = self.sparse.query(text) if text is not None else None
            if sparse is not None and not sparse[0]:  # only stopwords: nothing for BM25 to match
                if vector is None:
                    return []
                sparse = None
            if vector is None and sparse is None:
                raise ValueError("give a query vector, a query text, or both")
            self.record.checked_count(exact=False)  # a store that lost points is an error, not "no results"
            unit = bool(meta["model"].get("normalize", True)) if vector is not None else None
            raw = self.backend.search(vector, sparse, k + _TIE_EXTRA, where, max(MIN_PREFETCH, 2 * k), unit=unit)
            raw = sorted(raw, key=lambda hit: (-round(hit[1], 9), hit[0]))[:k]  # ties in one order, every time
            if len(raw) < k:
                explain_short_result(self.record, raw, k, where, dense=vector is not None)
        if any("text" not in p for _, _, p in raw):
            raise self.backend.damaged("chunks without their payload were found (ghost points)")
        if vector is not None and sparse is None and any(not -1 - _COSINE_SLACK <= s <= 1 + _COSINE_SLACK
                                                         for _, s, _ in raw):
            raise self.backend.damaged("a dense search scored a chunk outside [-1, 1] (damaged vectors)")
        return [Hit(pid, score, p.get("text", ""), p.get("source"), p.get("chunk"), p.get("start"), p.get("end"), p)
                for pid, score, p in raw]

    def payload_keys(self, sample: int = 256) -> list[str]:
        """Payload keys of the collection's chunks (from the first ``sample`` points): what ``where`` can filter on."""
        return payload_keys(self.record, sample)

    def count(self, where: Where | None = None) -> int:
        """Number of chunks (optionally those matching ``where``); 0 if the collection does not exist."""
        if not self.record.exists and self.backend.metadata() is None:
            return 0
        self._refreshed()
        with self.backend.session():
            return self.backend.count(where) if where else self.record.checked_count()

    def files(self) -> dict[str, int]:
        """Chunk count per indexed file (its resolved absolute path); texts added without a source are not listed."""
        return files_of(self.record)

    def delete(self, ids: Sequence[str | int] | None = None, *, where: Where | None = None,
               paths: Sequence[str | os.PathLike] | None = None) -> int:
        """Delete chunks by point id, by payload filter, or of files/folders at ``paths`` (with the chunks recorded
        under those folders whose file lies outside them); returns how many."""
        if sum(x is not None for x in (ids, where, paths)) != 1:
            raise ValueError("give exactly one of ids, where or paths")
        if where is not None and not where:
            raise ValueError("where={} would delete everything; use drop() to delete the collection")
        if not self.record.exists:
            return 0
        self.backend.lock()
        try:
            return delete_chunks(self.record, ids, check_where(where), paths)
        finally:
            self.backend.unlock()

    def check(self, repair: bool = False, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Verify the collection's store; with ``repair``, rebuild a damaged one from what can be read.

        Checks: every point is listed and has its payload, every stored vector reads back and is finite (and of
        unit length where the model normalises), a dense query answers, every file's chunks form one complete
        version, no chunk's file lies outside the folder it was recorded under. The repair re-embeds the text
        of every readable chunk (same model and BM25 settings) into a new shard, swapped in when complete;
        points whose payload was lost are dropped (``lganna-rag index`` re-indexes their files). Returns
        ``{"chunks", "files", "problems", "incomplete_files", "outside_files", "repaired", "lost"}``.
        """
        self.require()
        result = check(self.record, self.sparse, point_file, STATE_FIELDS, outside_root)
        if repair and result["damaged"]:
            self.backend.lock()
            try:
                kept, lost = rebuild(self.record, self.encoder, self.sparse, self.batch_size, progress)
            finally:
                self.backend.unlock()
            result.update(repaired=True, lost=lost, chunks=kept)
        del result["damaged"]
        return result

    def drop(self) -> None:
        """Delete the whole collection."""
        self.backend.drop()
        self.record.meta = None

    def info(self) -> dict[str, Any]:
        """Model, settings, chunk and file counts of this collection, and the store's other collections."""
        with self.backend.session(open_shard=self.record.exists):
            self.record.refresh()
            meta = self.record.meta or {}
            files = self.files()
            return {
                "backend": self.backend.kind, "store": self.backend.location(), "collection": self.collection,
                "exists": self.record.exists, "collections": self.backend.list_collections(),
                "model": meta.get("model"), "bm25": meta.get("bm25"), "chunking": meta.get("chunking"),
                "adapter": meta.get("adapter"), "chunks": self.count(), "files": len(files),
                "disk_bytes": self.backend.disk_bytes() if self.record.exists else 0,
            }

    def close(self) -> None:
        """Flush and release the store."""
        self.backend.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Index({self.backend.describe()}, model={(self.record.meta or {}).get('model', {}).get('name', self._model)!r})"


def _query_vector(vector: np.ndarray | Sequence[float] | None, dim: int) -> np.ndarray | None:
    """A query vector as float32, checked against the collection's dimension."""
    if vector is None:
        return None
    vector = np.asarray(vector, dtype=np.float32)
    if vector.shape != (dim,):
        raise ValueError(f"query vector has shape {vector.shape}; this collection holds {dim}-d vectors")
    return vector
