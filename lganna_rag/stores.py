"""Qdrant storage behind :class:`lganna_rag.index.Index`: one small interface, two backends.

- ``EdgeBackend``: the Qdrant engine in-process (``qdrant-edge-py``) in ``<path>/<collection>/``: the
  shard in ``shard/`` and the collection metadata in ``collection.json`` (written atomically, first).
- ``ClientBackend``: a Qdrant server or cluster through ``qdrant-client`` (or its local mode); the
  metadata lives in the collection's own ``metadata``.

Both store a dense vector (``dense``, cosine) and a sparse vector (``bm25``, IDF applied by Qdrant) per
point, keyword payload indexes on ``source`` and ``root``, and search dense, sparse or both fused with
reciprocal rank fusion. Both import their Qdrant package only when used.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

DENSE = "dense"
SPARSE = "bm25"
DEFAULT_PATH = ".lganna"
#: RRF constant (Cormack et al. 2009).
RRF_K = 60
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class IndexStoreError(RuntimeError):
    """The index store cannot be used as asked; the message says what to do."""


class StoreInUseError(IndexStoreError):
    """Another process holds the store (an index run, a search): wait for it; nothing is wrong with the store."""


class StoreDamagedError(IndexStoreError):
    """The store's files are damaged; the message names the store and the repair."""


#: Payload fields with a keyword index (``path`` is a file's identity: its resolved absolute path).
INDEXED_FIELDS = ("source", "root", "path")


Where = dict[str, Any]
Point = tuple[str, np.ndarray, tuple[list[int], list[float]], dict[str, Any]]


def _check_collection_name(name: str) -> str:
    if not isinstance(name, str) or not _COLLECTION_NAME.fullmatch(name):
        raise ValueError(f"invalid collection name {name!r}: use letters, digits, '_', '-', '.' (up to 128)")
    return name


#: ``quantization`` values a collection may record (stored dense vectors; ``None``: full float32).
QUANTIZATIONS = ("int8",)


def edge_dense_params(qe: Any, meta: dict[str, Any]) -> Any:
    """qdrant-edge dense vector parameters; ``meta["quantization"] == "int8"`` adds scalar int8 quantization
    (quantile 0.99, kept in RAM; Qdrant rescoring on the float32 originals is on by default)."""
    config = None
    if meta.get("quantization") == "int8":
        config = qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99, always_ram=True)
    return qe.EdgeVectorParams(size=int(meta["model"]["dimension"]), distance=qe.Distance.Cosine,
                               quantization_config=config)


def client_quantization(models: Any, meta: dict[str, Any]) -> Any:
    """The same scalar int8 quantization for a Qdrant server collection (``None`` without it)."""
    if meta.get("quantization") != "int8":
        return None
    return models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
        type=models.ScalarType.INT8, quantile=0.99, always_ram=True))


class EdgeBackend:
    """Points in an in-process Qdrant shard (``qdrant-edge-py``) at ``<path>/<collection>/shard``,
    with the collection metadata in ``<path>/<collection>/collection.json``."""

    kind = "edge"

    def __init__(self, path: str | os.PathLike, collection: str) -> None:
        """Point at a store folder; nothing is opened until first use."""
        self.root = Path(path).expanduser().resolve()
        self.collection = _check_collection_name(collection)
        self.dir = self.root / collection
        self._shard: Any = None
        self._lock_fd: int | None = None

    def describe(self) -> str:
        """Where the points live, for messages."""
        return f"{self.root} (collection {self.collection!r})"

    @property
    def meta_file(self) -> Path:
        """The collection's metadata file."""
        return self.dir / "collection.json"

    @property
    def lock_file(self) -> Path:
        """The file whose lock a process holds while it uses the collection (beside it, so ``drop`` keeps it)."""
        return self.root / f".{self.collection}.lock"

    def lock(self) -> None:
        """Take this collection's lock (once per backend; released by :meth:`close`).

        Taken before anything is created or opened, so of two processes creating the same new store one
        wins and the other gets :class:`StoreInUseError` instead of both writing it.
        """
        if self._lock_fd is not None:
            return
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._in_use() from None
        except OSError:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _in_use(self) -> StoreInUseError:
        return StoreInUseError(
            f"the store {self.dir} is in use by another process (another `lganna-rag index`, a search or a Python "
            f"program); wait for it to finish and run the command again"
        )

    def _busy(self) -> bool:
        """Whether another process holds the collection's lock (checked before calling a store damaged)."""
        if self._lock_fd is not None:
            return False
        try:
            self.lock()
        except StoreInUseError:
            return True
        except OSError:
            return False
        self._unlock()
        return False

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def repair_hint(self) -> str:
        """What to run to repair a damaged collection."""
        flag = "" if self.collection == "default" else f" --collection {self.collection}"
        return (f"repair it with `lganna-rag check --repair --path {self.root}{flag}` (keeps every readable chunk, "
                f"re-embeds it), or rebuild it from your files with `lganna-rag index PATHS --recreate --path "
                f"{self.root}{flag}`")

    def damaged(self, what: str) -> IndexStoreError:
        """The error for a damaged store (or "in use" if another process holds it: never advise deleting that)."""
        if self._busy():
            return self._in_use()
        return StoreDamagedError(f"the store at {self.dir} is damaged: {what}; {self.repair_hint()}")

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Map the engine's errors (plain ``Exception``, Rust panics) to :class:`IndexStoreError`."""
        try:
            yield
        except (IndexStoreError, KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
            raise
        except BaseException as exc:  # noqa: BLE001  the engine raises Exception and pyo3 PanicException
            text = str(exc)
            if "WouldBlock" in text or "lock" in text.lower():
                raise self._in_use() from None
            first = text.splitlines()[0] if text else type(exc).__name__
            raise self.damaged(f"the Qdrant engine reports: {first}") from None

    def list_collections(self) -> list[str]:
        """Names of the collections in this store folder."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "collection.json").is_file())

    def metadata(self) -> dict[str, Any] | None:
        """The collection's metadata, or ``None`` if it does not exist."""
        rebuild = (f"rebuild it from your files with `lganna-rag index PATHS --recreate --path {self.root}"
                   f"{'' if self.collection == 'default' else ' --collection ' + self.collection}`")
        if not self.meta_file.is_file():
            if (self.dir / "shard").exists():
                if self._busy():  # e.g. another process is creating or dropping it right now
                    raise self._in_use()
                raise StoreDamagedError(
                    f"the store at {self.dir} is corrupted: it has a shard but no collection.json (the model it was "
                    f"built with is unknown); {rebuild}"
                )
            return None
        try:
            meta = json.loads(self.meta_file.read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
                raise ValueError("not a collection description")
        except (ValueError, UnicodeDecodeError) as exc:
            if self._busy():
                raise self._in_use() from None
            raise StoreDamagedError(
                f"the store at {self.dir} is corrupted: {self.meta_file.name} is unreadable ({exc}); {rebuild}"
            ) from None
        return meta

    def _write_meta(self, meta: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_file.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.meta_file)

    def create(self, meta: dict[str, Any]) -> None:
        """Create the collection (under its lock): the metadata first (atomically), then the shard."""
        self.lock()
        if self.metadata() is not None:  # created by another process since we looked
            raise self._in_use()
        self._write_meta(meta)
        self._open()

    def update_metadata(self, meta: dict[str, Any]) -> None:
        """Replace the collection metadata (atomically)."""
        self.lock()
        self._write_meta(meta)

    def _open(self) -> Any:
        if self._shard is not None:
            return self._shard
        import qdrant_edge as qe

        self.lock()
        try:
            self._shard = self._load_or_create(qe)
        except BaseException:
            self._unlock()  # nothing is open: do not keep others out
            raise
        return self._shard

    def _load_or_create(self, qe: Any) -> Any:
        shard_dir = self.dir / "shard"
        segments = shard_dir / "segments"
        try:
            if not (shard_dir / "edge_config.json").exists() and not (segments.is_dir() and any(segments.iterdir())):
                # a new collection, or one whose creation was interrupted: create the (empty) shard
                meta = self.metadata()
                if meta is None:
                    raise IndexStoreError(f"collection {self.collection!r} does not exist in {self.root}")
                if shard_dir.exists():
                    shutil.rmtree(shard_dir)
                dense = edge_dense_params(qe, meta)
                shard = qe.EdgeShard.create(str(shard_dir), qe.EdgeConfig(
                    vectors={DENSE: dense}, sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}))
            else:
                shard = qe.EdgeShard.load(str(shard_dir))
            for key in sorted(set(INDEXED_FIELDS) - set(shard.info().payload_schema)):
                shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword))
        except (IndexStoreError, KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except BaseException as exc:  # noqa: BLE001  plain Exception from the engine, or a pyo3 PanicException
            text = str(exc)
            if "WouldBlock" in text or "lock" in text.lower():
                raise self._in_use() from None
            first = text.splitlines()[0] if text else type(exc).__name__
            raise StoreDamagedError(
                f"the store at {self.dir} is corrupted or unreadable (the Qdrant engine reports: {first}); "
                f"{self.repair_hint()}"
            ) from None
        return shard

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._unlock()

    # -- filters
    @staticmethod
    def _filter(where: Where | None, not_ids: Iterable[str] | None = None) -> Any:
        import qdrant_edge as qe

        must = []
        for key, value in (where or {}).items():
            if isinstance(value, (list, tuple, set)):
                must.append(qe.FieldCondition(key=key, match=qe.MatchAny(list(value))))
            else:
                must.append(qe.FieldCondition(key=key, match=qe.MatchValue(value)))
        must_not = [qe.HasIdCondition(set(not_ids))] if not_ids else None
        if not must and not must_not:
            return None
        return qe.Filter(must=must or None, must_not=must_not)

    # -- data
    def upsert(self, points: Sequence[Point]) -> None:
        """Insert or replace points ``(id, dense, (indices, values), payload)``."""
        import qdrant_edge as qe

        batch = [qe.Point(pid, {DENSE: dense, SPARSE: qe.SparseVector(idx, val)}, payload)
                 for pid, dense, (idx, val), payload in points]
        shard = self._open()
        with self._guard():
            shard.update(qe.UpdateOperation.upsert_points(batch))

    def set_payload(self, point_id: str, payload: dict[str, Any]) -> None:
        """Set (merge) payload fields of one point."""
        import qdrant_edge as qe

        shard = self._open()
        with self._guard():
            shard.update(qe.UpdateOperation.set_payload([point_id], payload))

    def delete(self, ids: Sequence[str] | None = None, where: Where | None = None,
               not_ids: Iterable[str] | None = None) -> None:
        """Delete points by id, or those matching ``where`` except ``not_ids``."""
        import qdrant_edge as qe

        shard = self._open()
        with self._guard():
            if ids is not None:
                if ids:
                    shard.update(qe.UpdateOperation.delete_points(list(ids)))
            else:
                shard.update(qe.UpdateOperation.delete_points_by_filter(self._filter(where, not_ids)))

    def _pages(self, convert: Callable[[Any], Any], batch: int, **request: Any) -> Iterator[Any]:
        """Every point matching a scroll ``request``, ``convert``-ed page by page under the store's guard."""
        import qdrant_edge as qe

        shard = self._open()
        offset = None
        while True:
            with self._guard():
                records, offset = shard.scroll(qe.ScrollRequest(offset=offset, limit=batch, **request))
                page = [convert(r) for r in records]
            yield from page
            if offset is None:
                return

    def scroll(self, fields: list[str] | bool, where: Where | None = None, batch: int = 2048) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(id, payload)`` of every point matching ``where`` (only ``fields`` of the payload)."""
        return self._pages(lambda r: (str(r.id), dict(r.payload or {})), batch, filter=self._filter(where),
                           with_payload=fields, with_vector=False)

    def dense_vectors(self, batch: int = 1024) -> Iterator[tuple[str, list[float]]]:
        """Yield ``(id, stored dense vector)`` of every point (what a dense search compares queries with)."""
        return self._pages(lambda r: (str(r.id), (r.vector or {}).get(DENSE)), batch, with_payload=False,
                           with_vector=[DENSE])

    def vector_sizes(self, batch: int = 512) -> Iterator[tuple[str, int, int]]:
        """Yield ``(id, dense length, sparse length)`` of every point: reads every stored vector (a check)."""

        def sizes(r: Any) -> tuple[str, int, int]:
            vec = r.vector or {}
            dense, sparse = vec.get(DENSE), vec.get(SPARSE)
            return (str(r.id), len(dense) if dense is not None else 0,
                    len(getattr(sparse, "indices", None) or []) if sparse is not None else -1)

        return self._pages(sizes, batch, with_payload=False, with_vector=True)

    def count(self, where: Where | None = None) -> int:
        """Number of points matching ``where``."""
        import qdrant_edge as qe

        shard = self._open()
        with self._guard():
            return int(shard.count(qe.CountRequest(exact=True, filter=self._filter(where))))

    def quick_count(self) -> int:
        """Number of points from the shard's statistics (microseconds; an exact count takes ~1 ms per 10k)."""
        shard = self._open()
        with self._guard():
            return int(shard.info().points_count)

    def count_empty(self, field: str) -> int:
        """Number of points whose payload lacks ``field`` (e.g. ``text``: points whose payload was lost)."""
        import qdrant_edge as qe

        shard = self._open()
        with self._guard():
            return int(shard.count(qe.CountRequest(exact=True, filter=qe.Filter(must=[qe.IsEmptyCondition(field)]))))

    def delete_empty(self, field: str) -> None:
        """Delete the points whose payload lacks ``field``."""
        import qdrant_edge as qe

        shard = self._open()
        with self._guard():
            shard.update(qe.UpdateOperation.delete_points_by_filter(qe.Filter(must=[qe.IsEmptyCondition(field)])))

    def search(self, dense: np.ndarray | None, sparse: tuple[list[int], list[float]] | None, k: int,
               where: Where | None, prefetch: int) -> list[tuple[str, float, dict[str, Any]]]:
        """Top ``k`` points by dense, sparse, or (both given) RRF-fused ranking."""
        import qdrant_edge as qe

        flt = self._filter(where)
        dense_q = qe.Query.Nearest(dense, using=DENSE) if dense is not None else None
        sparse_q = qe.Query.Nearest(qe.SparseVector(*sparse), using=SPARSE) if sparse is not None else None
        if dense_q is not None and sparse_q is not None:
            request = qe.QueryRequest(
                limit=k, query=qe.Fusion.Rrf(k=RRF_K), with_payload=True, filter=flt,
                prefetches=[qe.Prefetch(limit=prefetch, query=dense_q, filter=flt),
                            qe.Prefetch(limit=prefetch, query=sparse_q, filter=flt)],
            )
        else:
            request = qe.QueryRequest(limit=k, query=dense_q or sparse_q, with_payload=True, filter=flt)
        shard = self._open()
        with self._guard():
            return [(str(p.id), float(p.score), dict(p.payload or {})) for p in shard.query(request)]

    def flush(self) -> None:
        """Make written points durable."""
        if self._shard is not None:
            with self._guard():
                self._shard.flush()

    def optimize(self) -> None:
        """Merge segments and build the HNSW and sparse indexes."""
        if self._shard is not None:
            with self._guard():
                self._shard.optimize()

    def drop(self) -> None:
        """Delete the collection and its files (under its lock, which is kept until :meth:`close`)."""
        if self._shard is not None:
            with contextlib.suppress(Exception):
                self._shard.close()
            self._shard = None
        self.lock()
        if self.dir.exists():
            shutil.rmtree(self.dir)

    def replace_shard(self, points: Iterable[Point]) -> int:
        """Rebuild the shard from ``points`` (a repair): written beside the old one, then swapped in."""
        import qdrant_edge as qe

        meta = self.metadata()
        if meta is None:
            raise IndexStoreError(f"collection {self.collection!r} does not exist in {self.root}")
        self.lock()
        if self._shard is not None:
            with contextlib.suppress(BaseException):
                self._shard.close()
            self._shard = None
        new_dir, old_dir = self.dir / "shard.repair", self.dir / "shard.damaged"
        for d in (new_dir, old_dir):
            if d.exists():
                shutil.rmtree(d)
        dense = edge_dense_params(qe, meta)
        shard = qe.EdgeShard.create(str(new_dir), qe.EdgeConfig(
            vectors={DENSE: dense}, sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}))
        for key in INDEXED_FIELDS:
            shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword))
        n, batch = 0, []
        for pid, vec, (idx, val), payload in points:
            batch.append(qe.Point(pid, {DENSE: vec, SPARSE: qe.SparseVector(idx, val)}, payload))
            if len(batch) >= 256:
                shard.update(qe.UpdateOperation.upsert_points(batch))
                n, batch = n + len(batch), []
        if batch:
            shard.update(qe.UpdateOperation.upsert_points(batch))
            n += len(batch)
        shard.flush()
        shard.optimize()
        shard.close()
        if (self.dir / "shard").exists():
            os.replace(self.dir / "shard", old_dir)
        os.replace(new_dir, self.dir / "shard")
        shutil.rmtree(old_dir, ignore_errors=True)
        return n

    def close(self) -> None:
        """Flush and release the shard and the lock."""
        try:
            if self._shard is not None:
                try:
                    with self._guard():
                        self._shard.flush()
                finally:
                    with contextlib.suppress(BaseException):
                        self._shard.close()
                    self._shard = None
        finally:
            self._unlock()

    def disk_bytes(self) -> int:
        """Bytes used on disk (allocated blocks; the write-ahead log is preallocated sparsely)."""
        total = 0
        for p in self.dir.rglob("*"):
            if p.is_file():
                total += p.stat().st_blocks * 512
        return total


class ClientBackend:
    """Points in a Qdrant server or cluster (or ``qdrant-client`` local mode) through ``qdrant-client``."""

    kind = "qdrant"

    def __init__(self, collection: str, *, url: str | None = None, api_key: str | None = None,
                 timeout: float = 10.0, client: Any = None) -> None:
        """Connect to ``url`` (or use ``client``); fails fast with a clear error if Qdrant does not answer."""
        self.collection = _check_collection_name(collection)
        self.url = url
        self.timeout = timeout
        if client is None:
            from qdrant_client import QdrantClient

            if not url:
                raise ValueError("ClientBackend needs url= or client=")
            # first contact with the exact timeout (qdrant-client rounds it up to whole seconds)
            self._ensure_reachable(lambda: self._probe(url, api_key, timeout))
            client = QdrantClient(url=url, api_key=api_key, timeout=timeout, check_compatibility=False)
        self.client = client
        self._ensure_reachable(self.client.get_collections)

    @staticmethod
    def _probe(url: str, api_key: str | None, timeout: float) -> None:
        import httpx

        response = httpx.get(url.rstrip("/") + "/collections", headers={"api-key": api_key} if api_key else {},
                             timeout=timeout)
        if response.status_code >= 400:
            exc = RuntimeError(response.text[:200])
            exc.status_code, exc.reason_phrase = response.status_code, response.reason_phrase  # type: ignore[attr-defined]
            raise exc

    def describe(self) -> str:
        """Where the points live, for messages."""
        return f"{self.url or 'qdrant-client'} (collection {self.collection!r})"

    def lock(self) -> None:
        """Nothing to do: the server serialises writes."""

    def repair_hint(self) -> str:
        """What to run to repair a damaged collection."""
        return "rebuild it from your files with `lganna-rag index PATHS --recreate --url ...`"

    def damaged(self, what: str) -> IndexStoreError:
        """The error for a damaged collection."""
        return StoreDamagedError(f"collection {self.collection!r} on {self.url} is damaged: {what}; {self.repair_hint()}")

    def count_empty(self, field: str) -> int:
        """Number of points whose payload lacks ``field``."""
        from qdrant_client import models

        flt = models.Filter(must=[models.IsEmptyCondition(is_empty=models.PayloadField(key=field))])
        return int(self.client.count(self.collection, count_filter=flt, exact=True).count)

    def delete_empty(self, field: str) -> None:
        """Delete the points whose payload lacks ``field``."""
        from qdrant_client import models

        flt = models.Filter(must=[models.IsEmptyCondition(is_empty=models.PayloadField(key=field))])
        self.client.delete(self.collection, points_selector=models.FilterSelector(filter=flt), wait=True)

    def _ensure_reachable(self, call: Any) -> None:
        try:
            call()
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            if status is not None:  # it answered, but not as a Qdrant server would
                reason = getattr(exc, "reason_phrase", "") or ""
                hint = ("is this a Qdrant server (the REST port, usually 6333)? check --url / QDRANT_URL"
                        if status == 404 else "check --api-key / QDRANT_API_KEY" if status in (401, 403)
                        else "check the server's log")
                raise IndexStoreError(f"Qdrant at {self.url} answered HTTP {status} {reason}".rstrip()
                                      + f"; {hint}") from None
            cause = exc
            while cause.__cause__ is not None or cause.__context__ is not None:
                cause = cause.__cause__ or cause.__context__
            raise IndexStoreError(
                f"Qdrant at {self.url} did not answer within {self.timeout:g} s ({type(cause).__name__}: "
                f"{str(cause).splitlines()[0] if str(cause) else 'no response'}); check --url / QDRANT_URL and "
                f"--api-key, or leave --url out to use the local store in ./{DEFAULT_PATH}"
            ) from None

    def list_collections(self) -> list[str]:
        """Names of the server's collections that were made by lganna-rag."""
        names = []
        for c in self.client.get_collections().collections:
            meta = self.client.get_collection(c.name).config.metadata or {}
            if "lganna" in meta:
                names.append(c.name)
        return sorted(names)

    def metadata(self) -> dict[str, Any] | None:
        """The collection's metadata, or ``None`` if it does not exist."""
        if not self.client.collection_exists(self.collection):
            return None
        info = self.client.get_collection(self.collection)
        meta = info.config.metadata or {}
        if "lganna" not in meta:
            raise IndexStoreError(
                f"collection {self.collection!r} on {self.url} was not made by lganna-rag (no model metadata); "
                f"choose another --collection"
            )
        self._ensure_payload_indexes(set(info.payload_schema or {}))
        return meta["lganna"]

    def _ensure_payload_indexes(self, present: set[str]) -> None:
        from qdrant_client import models

        with warnings.catch_warnings():  # local mode: "payload indexes have no effect"
            warnings.simplefilter("ignore")
            for key in sorted(set(INDEXED_FIELDS) - present):
                self.client.create_payload_index(self.collection, key, models.PayloadSchemaType.KEYWORD)

    def create(self, meta: dict[str, Any]) -> None:
        """Create the collection with dense + sparse (IDF) vectors and keyword indexes on source and root."""
        from qdrant_client import models

        self.client.create_collection(
            self.collection,
            vectors_config={DENSE: models.VectorParams(size=int(meta["model"]["dimension"]), distance=models.Distance.COSINE,
                                                      quantization_config=client_quantization(models, meta))},
            sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            metadata={"lganna": meta},
        )
        self._ensure_payload_indexes(set())

    def update_metadata(self, meta: dict[str, Any]) -> None:
        """Replace the collection metadata."""
        self.client.update_collection(self.collection, metadata={"lganna": meta})

    @staticmethod
    def _filter(where: Where | None, not_ids: Iterable[str] | None = None) -> Any:
        from qdrant_client import models

        must = []
        for key, value in (where or {}).items():
            if isinstance(value, (list, tuple, set)):
                must.append(models.FieldCondition(key=key, match=models.MatchAny(any=list(value))))
            else:
                must.append(models.FieldCondition(key=key, match=models.MatchValue(value=value)))
        must_not = [models.HasIdCondition(has_id=list(not_ids))] if not_ids else None
        if not must and not must_not:
            return None
        return models.Filter(must=must or None, must_not=must_not)

    def upsert(self, points: Sequence[Point]) -> None:
        """Insert or replace points ``(id, dense, (indices, values), payload)``."""
        from qdrant_client import models

        structs = [
            models.PointStruct(id=pid, payload=payload, vector={
                DENSE: np.asarray(dense, dtype=np.float32).tolist(),
                SPARSE: models.SparseVector(indices=list(idx), values=list(val)),
            })
            for pid, dense, (idx, val), payload in points
        ]
        self.client.upsert(self.collection, structs, wait=True)

    def set_payload(self, point_id: str, payload: dict[str, Any]) -> None:
        """Set (merge) payload fields of one point."""
        self.client.set_payload(self.collection, payload=payload, points=[point_id], wait=True)

    def delete(self, ids: Sequence[str] | None = None, where: Where | None = None,
               not_ids: Iterable[str] | None = None) -> None:
        """Delete points by id, or those matching ``where`` except ``not_ids``."""
        from qdrant_client import models

        if ids is not None:
            if ids:
                self.client.delete(self.collection, points_selector=models.PointIdsList(points=list(ids)), wait=True)
        else:
            self.client.delete(self.collection, wait=True,
                               points_selector=models.FilterSelector(filter=self._filter(where, not_ids) or models.Filter()))

    def scroll(self, fields: list[str] | bool, where: Where | None = None, batch: int = 1024) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(id, payload)`` of every point matching ``where`` (only ``fields`` of the payload)."""
        offset = None
        flt = self._filter(where)
        while True:
            records, offset = self.client.scroll(self.collection, scroll_filter=flt, limit=batch, offset=offset,
                                                 with_payload=fields, with_vectors=False)
            for r in records:
                yield str(r.id), dict(r.payload or {})
            if offset is None:
                return

    def count(self, where: Where | None = None) -> int:
        """Number of points matching ``where``."""
        return int(self.client.count(self.collection, count_filter=self._filter(where), exact=True).count)

    def search(self, dense: np.ndarray | None, sparse: tuple[list[int], list[float]] | None, k: int,
               where: Where | None, prefetch: int) -> list[tuple[str, float, dict[str, Any]]]:
        """Top ``k`` points by dense, sparse, or (both given) RRF-fused ranking."""
        from qdrant_client import models

        flt = self._filter(where)
        dense_q = np.asarray(dense, dtype=np.float32).tolist() if dense is not None else None
        sparse_q = models.SparseVector(indices=list(sparse[0]), values=list(sparse[1])) if sparse is not None else None
        if dense_q is not None and sparse_q is not None:
            result = self.client.query_points(
                self.collection, query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)), limit=k, with_payload=True,
                prefetch=[models.Prefetch(query=dense_q, using=DENSE, limit=prefetch, filter=flt),
                          models.Prefetch(query=sparse_q, using=SPARSE, limit=prefetch, filter=flt)],
            )
        else:
            result = self.client.query_points(self.collection, query=dense_q if dense_q is not None else sparse_q,
                                              using=DENSE if dense_q is not None else SPARSE, limit=k,
                                              with_payload=True, query_filter=flt)
        return [(str(p.id), float(p.score), dict(p.payload or {})) for p in result.points]

    def flush(self) -> None:
        """Nothing to do: the server persists each acknowledged write."""

    def optimize(self) -> None:
        """Nothing to do: the server optimises in the background."""

    def drop(self) -> None:
        """Delete the collection."""
        if self.client.collection_exists(self.collection):
            self.client.delete_collection(self.collection)

    def close(self) -> None:
        """Close the client connection."""
        self.client.close()

    def disk_bytes(self) -> int:
        """Unknown for a server (0)."""
        return 0


