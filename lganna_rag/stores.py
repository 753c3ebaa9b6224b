"""Qdrant storage behind :class:`lganna_rag.index.Index`: one :class:`Store` protocol, two backends.

- ``EdgeBackend``: the Qdrant engine in-process (``qdrant-edge-py``) in ``<path>/<collection>/``: the
  shard in ``shard/`` and the collection metadata in ``collection.json`` (written atomically, first).
- ``ClientBackend``: a Qdrant server or cluster through ``qdrant-client`` (or its local mode); the
  metadata lives in the collection's own ``metadata``.

Both store a dense vector (``dense``, cosine) and a sparse vector (``bm25``, IDF applied by Qdrant) per
point, keyword payload indexes on ``source``, ``root`` and ``path``, and search dense, sparse or both fused with
reciprocal rank fusion. Both import their Qdrant package only when used.

Sharing a local collection between processes (the engine lets one process open a shard at a time):
a process holds the shard only while it uses it and hands it over when another process asks
(:class:`StoreLock`). Readers wait for the shard instead of failing; a write run (``index``, ``adapt``,
``delete``, ``check --repair``) also holds a writer lock from start to end, so two write runs never interleave,
and encodes its chunks without holding the shard, so searches go on between its write steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

DENSE = "dense"
SPARSE = "bm25"
DEFAULT_PATH = ".lganna"
#: RRF constant (Cormack et al. 2009).
RRF_K = 60
#: Seconds a process waits for a local collection that another process is using before giving up.
DEFAULT_WAIT = 60.0
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
Sparse = tuple[list[int], list[float]]
Hits = list[tuple[str, float, dict[str, Any]]]
#: ``(id, payload fields, dense vector or None, sparse vector or None)`` of a stored point, as read back.
Record = tuple[str, dict[str, Any], list[float] | None, Sparse | None]


def _check_collection_name(name: str) -> str:
    if not isinstance(name, str) or not _COLLECTION_NAME.fullmatch(name):
        raise ValueError(f"invalid collection name {name!r}: use letters, digits, '_', '-', '.' (up to 128)")
    return name


#: ``quantization`` values a collection may record (stored dense vectors; ``None``: full float32).
QUANTIZATIONS = ("int8",)


class Store(Protocol):
    """What :class:`~lganna_rag.index.Index` needs from a backend. A backend that cannot do something raises
    :class:`IndexStoreError` saying so (e.g. a Qdrant server's collection cannot be repaired here)."""

    kind: str
    collection: str
    #: The collection's own folder (adapters are kept there), ``None`` for a server.
    local_dir: Path | None
    #: Whether the chunk count recorded after each write is checked on read (a local shard can lose id mappings).
    tracks_count: bool
    #: Bumped whenever the store was (re)opened, so a reader knows to re-read the collection's metadata.
    generation: int

    def describe(self) -> str: ...
    def location(self) -> str: ...
    def lock(self) -> None: ...
    def unlock(self) -> None: ...
    def session(self) -> contextlib.AbstractContextManager[None]: ...
    def repair_hint(self) -> str: ...
    def damaged(self, what: str) -> IndexStoreError: ...
    def list_collections(self) -> list[str]: ...
    def metadata(self) -> dict[str, Any] | None: ...
    def create(self, meta: dict[str, Any]) -> None: ...
    def update_metadata(self, meta: dict[str, Any]) -> None: ...
    def upsert(self, points: Sequence[Point]) -> None: ...
    def set_payload(self, point_id: str | Sequence[str], payload: dict[str, Any]) -> None: ...
    def delete(self, ids: Sequence[str] | None = None, where: Where | None = None,
               not_ids: Iterable[str] | None = None) -> None: ...
    def scroll(self, fields: list[str] | bool, where: Where | None = None) -> Iterator[tuple[str, dict[str, Any]]]: ...
    def dense_vectors(self) -> Iterator[tuple[str, list[float] | None]]: ...
    def records(self, fields: list[str] | bool) -> Iterator[Record]: ...
    def count(self, where: Where | None = None) -> int: ...
    def quick_count(self) -> int: ...
    def count_empty(self, field: str) -> int: ...
    def delete_empty(self, field: str) -> None: ...
    def search(self, dense: np.ndarray | None, sparse: Sparse | None, k: int, where: Where | None,
               prefetch: int, unit: bool | None = None) -> Hits: ...
    def flush(self) -> None: ...
    def optimize(self) -> None: ...
    def drop(self) -> None: ...
    def replace_shard(self, points: Iterable[Point]) -> int: ...
    def close(self) -> None: ...
    def disk_bytes(self) -> int: ...


def _request(where: Where | None, *, field: Callable[[str, Any, bool], Any],
             has_id: Callable[[list[str]], Any], build: Callable[[list[Any] | None, list[Any] | None], Any],
             not_ids: Iterable[str] | None = None) -> Any:
    """A Qdrant filter from ``where`` (key -> value or list of accepted values) and ``not_ids``, built with one
    backend's classes: ``field(key, value, is_list)``, ``has_id(ids)``, ``build(must, must_not)``."""
    must = [field(key, list(value) if isinstance(value, (list, tuple, set)) else value,
                  isinstance(value, (list, tuple, set))) for key, value in (where or {}).items()]
    must_not = [has_id(list(not_ids))] if not_ids else None
    if not must and not must_not:
        return None
    return build(must or None, must_not)


#: A stored vector of a normalising model whose norm is further than this from 1 is damaged.
NORM_TOLERANCE = 1e-2


def damaged_rows(vectors: np.ndarray, unit: bool) -> int:
    """Rows with non-finite values, or (``unit``) a norm further than :data:`NORM_TOLERANCE` from 1: vectors no model
    made (bytes overwritten on disk)."""
    vectors = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1)
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(vectors).all(axis=1)
        bad = ~finite
        if unit:
            bad |= finite & (np.abs(np.sqrt((vectors ** 2).sum(axis=1)) - 1.0) > NORM_TOLERANCE)
    return int(bad.sum())


def _checked_hits(points: Iterable[Any], unit: bool | None, damaged: Callable[[str], IndexStoreError]) -> Hits:
    """``(id, score, payload)`` of scored points; with ``unit`` set, their dense vectors must be vectors a model made."""
    points = list(points)
    if unit is not None:
        vectors = [(p.vector or {}).get(DENSE) for p in points]
        dims = {len(v) for v in vectors if v is not None}
        if None in vectors or len(dims) > 1 or (vectors and damaged_rows(np.asarray(vectors), unit)):
            raise damaged("a search found chunks with damaged vectors (non-finite, or not of unit length)")
    return [(str(p.id), float(p.score), dict(p.payload or {})) for p in points]


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


def _create_shard(qe: Any, folder: Path, meta: dict[str, Any]) -> Any:
    """A new empty shard at ``folder`` with this collection's vectors and the keyword payload indexes."""
    shard = qe.EdgeShard.create(str(folder), qe.EdgeConfig(
        vectors={DENSE: edge_dense_params(qe, meta)},
        sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}))
    for key in INDEXED_FIELDS:
        shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword))
    return shard


class StoreLock:
    """The locks of one local collection, beside it in the store folder (so ``drop`` keeps them).

    ``.<collection>.lock``: held by the one process that has the shard open (the engine allows one); a process
    that needs it and finds it taken writes ``.<collection>.want`` and waits (up to ``wait`` seconds), and the
    holder hands the shard over at its next idle moment. ``.<collection>.write``: held by a write run from start
    to end, so two runs never write the same collection at once (the second fails at once: it would wait minutes).
    The lock files hold a line saying who holds them (pid, what), for the messages.
    """

    def __init__(self, root: Path, collection: str, holder: str | None = None) -> None:
        """Locks of ``collection`` in the store folder ``root``; ``holder`` describes this process in messages."""
        self.root, self.collection = root, collection
        self.holder = holder or " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))[:160]
        self._access: int | None = None
        self._writer: int | None = None
        self.acquired_at = 0.0

    def _file(self, kind: str) -> Path:
        return self.root / f".{self.collection}.{kind}"

    @property
    def held(self) -> bool:
        """Whether this process holds the access lock."""
        return self._access is not None

    def _try(self, kind: str) -> int | None:
        """The descriptor of ``kind``'s lock file, locked; ``None`` when another process holds it."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._file(kind), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "what": self.holder}).encode() + b"\n", 0)
        return fd

    def _who(self, kind: str) -> str:
        """Who holds ``kind``'s lock, from its file (best effort)."""
        try:
            info = json.loads(self._file(kind).read_text(encoding="utf-8") or "{}")
            return f"process {info['pid']} ({info['what']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def in_use(self, kind: str = "lock", waited: float | None = None) -> StoreInUseError:
        """The error for a lock held elsewhere, naming the holder and what to do."""
        who = self._who(kind)
        server = " through the server: add --server URL (its address)" if "serve" in who else ""
        if kind == "write":
            return StoreInUseError(
                f"the store {self.root / self.collection} is in use by another process: {who} is writing it (an "
                f"index, adapt or repair run); wait for it to finish and run the command again")
        return StoreInUseError(
            f"the store {self.root / self.collection} is in use by another process: {who} did not hand it over "
            f"within {waited or 0:g} s; run the command again when it is done, or search{server or ' through a server'}"
            f" (lganna-rag serve --collection {self.collection}, then search --server URL)")

    def acquire(self, wait: float) -> None:
        """Take the access lock, asking its holder to hand it over and waiting up to ``wait`` seconds."""
        if self._access is not None:
            return
        deadline = time.monotonic() + wait
        want = self._file("want")
        while True:
            if not self._other_waits(want) or time.monotonic() > deadline - wait / 2:
                fd = self._try("lock")
                if fd is not None:
                    self._access, self.acquired_at = fd, time.time()
                    with contextlib.suppress(OSError):
                        if want.read_text().strip() == str(os.getpid()):
                            want.unlink()
                    return
                with contextlib.suppress(OSError):
                    want.write_text(str(os.getpid()))
            if time.monotonic() > deadline:
                raise self.in_use("lock", wait)
            time.sleep(0.02)

    @staticmethod
    def _other_waits(want: Path) -> bool:
        """Whether another process asked for the shard in the last 2 s (it goes first)."""
        try:
            return want.read_text().strip() != str(os.getpid()) and time.time() - want.stat().st_mtime < 2.0
        except OSError:
            return False

    def wanted(self) -> bool:
        """Whether another process asks for the shard this process holds."""
        want = self._file("want")
        try:
            return (self._access is not None and want.stat().st_mtime >= self.acquired_at - 0.01
                    and want.read_text().strip() != str(os.getpid()))
        except OSError:
            return False

    def release(self) -> None:
        """Release the access lock (closing the descriptor releases the flock)."""
        if self._access is not None:
            os.close(self._access)
            self._access = None

    def acquire_writer(self) -> None:
        """Take the writer lock for a write run, or raise :class:`StoreInUseError` at once."""
        if self._writer is None:
            fd = self._try("write")
            if fd is None:
                raise self.in_use("write")
            self._writer = fd

    def release_writer(self) -> None:
        """Release the writer lock."""
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None

    def busy(self) -> bool:
        """Whether another process holds either lock right now."""
        for kind, mine in (("write", self._writer), ("lock", self._access)):
            if mine is None:
                fd = self._try(kind)
                if fd is None:
                    return True
                os.close(fd)
        return False


class SharedShard:
    """One local shard shared with other processes: opened on first use and kept open while this process uses it;
    when another process asks for it (see :class:`StoreLock`), closed at the next moment no operation or
    :meth:`session` runs here, and opened again (with what the other process wrote) by the next operation."""

    def __init__(self, folder: Path, locks: StoreLock, wait: float, create: Callable[[Any, Path], Any],
                 repair_hint: Callable[[], str]) -> None:
        """``folder``: the shard's folder; ``create(qe, folder)`` makes it when missing; ``wait``: seconds to wait."""
        self.folder, self.locks, self.wait = folder, locks, wait
        self._create, self._repair_hint = create, repair_hint
        self.shard: Any = None
        self.generation = 0
        self.pins = 0
        self.mutex = threading.RLock()
        self._watcher: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Map the engine's errors (plain ``Exception``, Rust panics) to :class:`IndexStoreError`."""
        try:
            yield
        except (IndexStoreError, KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
            raise
        except BaseException as exc:  # noqa: BLE001  the engine raises Exception and pyo3 PanicException
            text = str(exc)
            if "WouldBlock" in text:
                raise self.locks.in_use("lock", self.wait) from None
            first = text.splitlines()[0] if text else type(exc).__name__
            raise StoreDamagedError(f"the store at {self.folder.parent} is damaged: the Qdrant engine reports: "
                                    f"{first}; {self._repair_hint()}") from None

    @contextlib.contextmanager
    def session(self, open_shard: bool = True) -> Iterator[None]:
        """Hold the shard (taking it, waiting up to ``wait`` seconds) for several operations that must see one
        state; without a session each operation holds it for itself. Re-entrant."""
        with self.mutex:
            self.pins += 1
        try:
            if open_shard:
                self.open()
            else:
                self.locks.acquire(self.wait)
            yield
        finally:
            with self.mutex:
                self.pins -= 1
                if self.pins == 0 and (self.shard is None or self.locks.wanted()):
                    self.hand_over()  # nothing open to keep, or another process asks for it

    @contextlib.contextmanager
    def op(self) -> Iterator[Any]:
        """The open shard for one operation, engine errors mapped."""
        with self.session(), self.guard():
            yield self.shard

    def open(self) -> Any:
        """The open shard (taking the access lock and loading it if needed)."""
        with self.mutex:
            if self.shard is not None:
                return self.shard
            import qdrant_edge as qe

            self.locks.acquire(self.wait)
            try:
                self.shard = self._load(qe)
            except BaseException:
                if self.pins == 0:
                    self.locks.release()  # nothing is open: do not keep others out
                raise
            self.generation += 1
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._watch, name="lganna-store", daemon=True)
                self._watcher.start()
            return self.shard

    def _load(self, qe: Any) -> Any:
        segments = self.folder / "segments"
        try:
            if not (self.folder / "edge_config.json").exists() and not (segments.is_dir() and any(segments.iterdir())):
                # a new collection, or one whose creation was interrupted: create the (empty) shard
                if self.folder.exists():
                    shutil.rmtree(self.folder)
                return self._create(qe, self.folder)
            shard = qe.EdgeShard.load(str(self.folder))
            for key in sorted(set(INDEXED_FIELDS) - set(shard.info().payload_schema)):
                shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword))
            return shard
        except (IndexStoreError, KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except BaseException as exc:  # noqa: BLE001  plain Exception from the engine, or a pyo3 PanicException
            text = str(exc)
            if "WouldBlock" in text:
                raise self.locks.in_use("lock", self.wait) from None
            first = text.splitlines()[0] if text else type(exc).__name__
            raise StoreDamagedError(f"the store at {self.folder.parent} is corrupted or unreadable (the Qdrant engine "
                                    f"reports: {first}); {self._repair_hint()}") from None

    def _watch(self) -> None:
        """While the shard is open: hand it over as soon as another process asks and nothing here uses it."""
        while True:
            time.sleep(0.05)
            with self.mutex:
                if self.shard is None and not self.locks.held:
                    self._watcher = None
                    return
                if self.pins == 0 and self.locks.wanted():
                    self.hand_over()

    def hand_over(self) -> None:
        """Close the shard (flushed) and release it, for the process that asked."""
        with self.mutex:
            self.close_shard()
            self.locks.release()

    def close_shard(self) -> None:
        """Flush and close the shard, keeping the lock."""
        with self.mutex:
            if self.shard is not None:
                try:
                    with self.guard():
                        self.shard.flush()
                finally:
                    with contextlib.suppress(BaseException):
                        self.shard.close()
                    self.shard = None


class EdgeBackend:
    """Points in an in-process Qdrant shard (``qdrant-edge-py``) at ``<path>/<collection>/shard``, shared with
    other processes (:class:`SharedShard`), with the collection metadata in ``<path>/<collection>/collection.json``."""

    kind = "edge"
    tracks_count = True

    def __init__(self, path: str | os.PathLike, collection: str, *, wait: float = DEFAULT_WAIT,
                 holder: str | None = None) -> None:
        """Point at a store folder; nothing is opened until first use. ``wait``: seconds to wait for the shard
        when another process uses it; ``holder``: how this process is named in other processes' messages."""
        self.root = Path(path).expanduser().resolve()
        self.collection = _check_collection_name(collection)
        self.dir = self.root / collection
        self.local_dir: Path | None = self.dir
        self._locks = StoreLock(self.root, collection, holder)
        self._shared = SharedShard(self.dir / "shard", self._locks, wait, self._create_shard, self.repair_hint)
        self.session = self._shared.session
        self._shard_op = self._shared.op

    @property
    def generation(self) -> int:
        """Bumped whenever the shard was (re)opened: another process may have changed the collection."""
        return self._shared.generation

    def describe(self) -> str:
        """Where the points live, for messages."""
        return f"{self.root} (collection {self.collection!r})"

    def location(self) -> str:
        """The store folder."""
        return str(self.root)

    @property
    def meta_file(self) -> Path:
        """The collection's metadata file."""
        return self.dir / "collection.json"

    def lock(self) -> None:
        """Take this collection's writer lock for a write run (released by :meth:`close`); raises
        :class:`StoreInUseError` at once if another run writes it. Taken before anything is created, so of two
        processes creating the same new store one wins and the other is told it is busy."""
        self._locks.acquire_writer()

    def unlock(self) -> None:
        """Release the writer lock taken by :meth:`lock` (the end of a write run)."""
        self._locks.release_writer()

    def repair_hint(self) -> str:
        """What to run to repair a damaged collection."""
        flag = "" if self.collection == "default" else f" --collection {self.collection}"
        return (f"repair it with `lganna-rag check --repair --path {self.root}{flag}` (keeps every readable chunk, "
                f"re-embeds it), or rebuild it from your files with `lganna-rag index PATHS --recreate --path "
                f"{self.root}{flag}`")

    def damaged(self, what: str) -> IndexStoreError:
        """The error for a damaged store."""
        return StoreDamagedError(f"the store at {self.dir} is damaged: {what}; {self.repair_hint()}")

    def list_collections(self) -> list[str]:
        """Names of the collections in this store folder."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "collection.json").is_file())

    def _rebuild_hint(self) -> str:
        return (f"rebuild it from your files with `lganna-rag index PATHS --recreate --path {self.root}"
                f"{'' if self.collection == 'default' else ' --collection ' + self.collection}`")

    def metadata(self) -> dict[str, Any] | None:
        """The collection's metadata, or ``None`` if it does not exist."""
        if not self.meta_file.is_file():
            if (self.dir / "shard").exists():
                if self._locks.busy():  # e.g. another process is creating or dropping it right now
                    raise self._locks.in_use("write")
                raise StoreDamagedError(f"the store at {self.dir} is corrupted: it has a shard but no collection.json "
                                        f"(the model it was built with is unknown); {self._rebuild_hint()}")
            return None
        try:
            meta = json.loads(self.meta_file.read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
                raise ValueError("not a collection description")
        except (ValueError, UnicodeDecodeError) as exc:
            if self._locks.busy():
                raise self._locks.in_use("write") from None
            raise StoreDamagedError(f"the store at {self.dir} is corrupted: {self.meta_file.name} is unreadable "
                                    f"({exc}); {self._rebuild_hint()}") from None
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
        """Create the collection (under its writer lock): the metadata first (atomically), then the shard."""
        self.lock()
        with self.session(open_shard=False):
            if self.metadata() is not None:  # created by another process since we looked
                raise self._locks.in_use("write")
            self._write_meta(meta)
            self._open()

    def update_metadata(self, meta: dict[str, Any]) -> None:
        """Replace the collection metadata (atomically, while holding the shard)."""
        with self.session(open_shard=False):
            self._write_meta(meta)

    def _create_shard(self, qe: Any, folder: Path) -> Any:
        meta = self.metadata()
        if meta is None:
            raise IndexStoreError(f"collection {self.collection!r} does not exist in {self.root}")
        return _create_shard(qe, folder, meta)

    def _open(self) -> Any:
        """The open shard (tests and repairs reach the engine through it)."""
        return self._shared.open()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._locks.release()
            self._locks.release_writer()

    # -- data
    @staticmethod
    def _filter(where: Where | None, not_ids: Iterable[str] | None = None) -> Any:
        import qdrant_edge as qe

        return _request(where, not_ids=not_ids, has_id=lambda ids: qe.HasIdCondition(set(ids)),
                        field=lambda k, v, many: qe.FieldCondition(key=k, match=qe.MatchAny(v) if many else qe.MatchValue(v)),
                        build=lambda must, must_not: qe.Filter(must=must, must_not=must_not))

    def upsert(self, points: Sequence[Point]) -> None:
        """Insert or replace points ``(id, dense, (indices, values), payload)``."""
        import qdrant_edge as qe

        batch = [qe.Point(pid, {DENSE: dense, SPARSE: qe.SparseVector(idx, val)}, payload)
                 for pid, dense, (idx, val), payload in points]
        with self._shard_op() as shard:
            shard.update(qe.UpdateOperation.upsert_points(batch))

    def set_payload(self, point_id: str | Sequence[str], payload: dict[str, Any]) -> None:
        """Set (merge) payload fields of one point, or of every point in a list of ids."""
        import qdrant_edge as qe

        ids = [point_id] if isinstance(point_id, str) else list(point_id)
        with self._shard_op() as shard:
            shard.update(qe.UpdateOperation.set_payload(ids, payload))

    def delete(self, ids: Sequence[str] | None = None, where: Where | None = None,
               not_ids: Iterable[str] | None = None) -> None:
        """Delete points by id, or those matching ``where`` except ``not_ids``."""
        import qdrant_edge as qe

        with self._shard_op() as shard:
            if ids is not None:
                if ids:
                    shard.update(qe.UpdateOperation.delete_points(list(ids)))
            else:
                shard.update(qe.UpdateOperation.delete_points_by_filter(self._filter(where, not_ids)))

    def _pages(self, convert: Callable[[Any], Any], batch: int, **request: Any) -> Iterator[Any]:
        """Every point matching a scroll ``request``, ``convert``-ed page by page (one session for all pages)."""
        import qdrant_edge as qe

        with self.session():
            offset = None
            while True:
                with self._shard_op() as shard:
                    records, offset = shard.scroll(qe.ScrollRequest(offset=offset, limit=batch, **request))
                    page = [convert(r) for r in records]
                yield from page
                if offset is None:
                    return

    def scroll(self, fields: list[str] | bool, where: Where | None = None, batch: int = 2048) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(id, payload)`` of every point matching ``where`` (only ``fields`` of the payload)."""
        return self._pages(lambda r: (str(r.id), dict(r.payload or {})), batch, filter=self._filter(where),
                           with_payload=fields, with_vector=False)

    def dense_vectors(self, batch: int = 1024) -> Iterator[tuple[str, list[float] | None]]:
        """Yield ``(id, stored dense vector)`` of every point (what a dense search compares queries with)."""
        return self._pages(lambda r: (str(r.id), (r.vector or {}).get(DENSE)), batch, with_payload=False,
                           with_vector=[DENSE])

    def records(self, fields: list[str] | bool, batch: int = 512) -> Iterator[Record]:
        """Yield every point with ``fields`` of its payload and both stored vectors (a check reads them all)."""
        return self._pages(_record, batch, with_payload=fields, with_vector=True)

    def count(self, where: Where | None = None) -> int:
        """Number of points matching ``where``."""
        import qdrant_edge as qe

        with self._shard_op() as shard:
            return int(shard.count(qe.CountRequest(exact=True, filter=self._filter(where))))

    def quick_count(self) -> int:
        """Number of points from the shard's statistics (microseconds; an exact count takes ~1 ms per 10k)."""
        with self._shard_op() as shard:
            return int(shard.info().points_count)

    def count_empty(self, field: str) -> int:
        """Number of points whose payload lacks ``field`` (e.g. ``text``: points whose payload was lost)."""
        import qdrant_edge as qe

        with self._shard_op() as shard:
            return int(shard.count(qe.CountRequest(exact=True, filter=qe.Filter(must=[qe.IsEmptyCondition(field)]))))

    def delete_empty(self, field: str) -> None:
        """Delete the points whose payload lacks ``field``."""
        import qdrant_edge as qe

        with self._shard_op() as shard:
            shard.update(qe.UpdateOperation.delete_points_by_filter(qe.Filter(must=[qe.IsEmptyCondition(field)])))

    def search(self, dense: np.ndarray | None, sparse: Sparse | None, k: int, where: Where | None,
               prefetch: int, unit: bool | None = None) -> Hits:
        """Top ``k`` points by dense, sparse, or (both given) RRF-fused ranking. ``unit`` (``True``: the model
        normalises; ``False``: it does not) checks the hits' stored dense vectors (see :func:`damaged_rows`)."""
        import qdrant_edge as qe

        flt = self._filter(where)
        vectors = [DENSE] if unit is not None else False
        dense_q = qe.Query.Nearest(dense, using=DENSE) if dense is not None else None
        sparse_q = qe.Query.Nearest(qe.SparseVector(*sparse), using=SPARSE) if sparse is not None else None
        if dense_q is not None and sparse_q is not None:
            request = qe.QueryRequest(
                limit=k, query=qe.Fusion.Rrf(k=RRF_K), with_payload=True, filter=flt, with_vector=vectors,
                prefetches=[qe.Prefetch(limit=prefetch, query=dense_q, filter=flt),
                            qe.Prefetch(limit=prefetch, query=sparse_q, filter=flt)],
            )
        else:
            request = qe.QueryRequest(limit=k, query=dense_q or sparse_q, with_payload=True, filter=flt,
                                      with_vector=vectors)
        with self._shard_op() as shard:
            return _checked_hits(shard.query(request), unit, self.damaged)

    def flush(self) -> None:
        """Make written points durable."""
        with self._shared.mutex:
            if self._shared.shard is not None:
                with self._shard_op() as shard:
                    shard.flush()

    def optimize(self) -> None:
        """Merge segments and build the HNSW and sparse indexes."""
        with self._shared.mutex:
            if self._shared.shard is not None:
                with self._shard_op() as shard:
                    shard.optimize()

    def drop(self) -> None:
        """Delete the collection and its files (under its writer lock, which is kept until :meth:`close`)."""
        self.lock()
        with self.session(open_shard=False), self._shared.mutex:
            self._shared.close_shard()
            if self.dir.exists():
                shutil.rmtree(self.dir)

    def replace_shard(self, points: Iterable[Point]) -> int:
        """Rebuild the shard from ``points`` (a repair): written beside the old one, then swapped in."""
        import qdrant_edge as qe

        self.lock()
        with self.session(open_shard=False), self._shared.mutex:
            meta = self.metadata()
            if meta is None:
                raise IndexStoreError(f"collection {self.collection!r} does not exist in {self.root}")
            self._shared.close_shard()
            new_dir, old_dir = self.dir / "shard.repair", self.dir / "shard.damaged"
            for d in (new_dir, old_dir):
                if d.exists():
                    shutil.rmtree(d)
            shard = _create_shard(qe, new_dir, meta)
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
        """Flush and release the shard and the locks."""
        with self._shared.mutex:
            try:
                self._shared.close_shard()
            finally:
                self._locks.release()
                self._locks.release_writer()

    def disk_bytes(self) -> int:
        """Bytes used on disk (allocated blocks; the write-ahead log is preallocated sparsely)."""
        return sum(p.stat().st_blocks * 512 for p in self.dir.rglob("*") if p.is_file())


def _record(point: Any) -> Record:
    """A scrolled point as a :data:`Record`."""
    vec = point.vector or {}
    dense, sparse = vec.get(DENSE), vec.get(SPARSE)
    pair = (list(sparse.indices), list(sparse.values)) if sparse is not None else None
    return str(point.id), dict(point.payload or {}), list(dense) if dense is not None else None, pair


class ClientBackend:
    """Points in a Qdrant server or cluster (or ``qdrant-client`` local mode) through ``qdrant-client``."""

    kind = "qdrant"
    tracks_count = False
    local_dir: Path | None = None
    generation = 0

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

    def location(self) -> str:
        """The server's URL."""
        return self.url or "the Qdrant server"

    def lock(self) -> None:
        """Nothing to do: the server serialises writes."""

    def unlock(self) -> None:
        """Nothing to do (see :meth:`lock`)."""

    @contextlib.contextmanager
    def session(self, open_shard: bool = True) -> Iterator[None]:
        """Nothing to hold: the server serves many clients at once."""
        yield

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

        def field(key: str, value: Any, many: bool) -> Any:
            return models.FieldCondition(key=key, match=models.MatchAny(any=value) if many else models.MatchValue(value=value))

        return _request(where, not_ids=not_ids, field=field, has_id=lambda ids: models.HasIdCondition(has_id=ids),
                        build=lambda must, must_not: models.Filter(must=must, must_not=must_not))

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

    def set_payload(self, point_id: str | Sequence[str], payload: dict[str, Any]) -> None:
        """Set (merge) payload fields of one point, or of every point in a list of ids."""
        ids = [point_id] if isinstance(point_id, str) else list(point_id)
        self.client.set_payload(self.collection, payload=payload, points=ids, wait=True)

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

    def _records(self, batch: int, **request: Any) -> Iterator[Any]:
        offset = None
        while True:
            records, offset = self.client.scroll(self.collection, limit=batch, offset=offset, **request)
            yield from records
            if offset is None:
                return

    def scroll(self, fields: list[str] | bool, where: Where | None = None, batch: int = 1024) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(id, payload)`` of every point matching ``where`` (only ``fields`` of the payload)."""
        for r in self._records(batch, scroll_filter=self._filter(where), with_payload=fields, with_vectors=False):
            yield str(r.id), dict(r.payload or {})

    def dense_vectors(self, batch: int = 512) -> Iterator[tuple[str, list[float] | None]]:
        """Yield ``(id, stored dense vector)`` of every point."""
        for r in self._records(batch, with_payload=False, with_vectors=[DENSE]):
            yield str(r.id), (r.vector or {}).get(DENSE)

    def records(self, fields: list[str] | bool, batch: int = 256) -> Iterator[Record]:
        """Yield every point with ``fields`` of its payload and both stored vectors (a check reads them all)."""
        for r in self._records(batch, with_payload=fields, with_vectors=True):
            yield _record(r)

    def count(self, where: Where | None = None) -> int:
        """Number of points matching ``where``."""
        return int(self.client.count(self.collection, count_filter=self._filter(where), exact=True).count)

    def quick_count(self) -> int:
        """Number of points (the server's exact count)."""
        return self.count()

    def replace_shard(self, points: Iterable[Point]) -> int:
        """Not possible here: a server's collection is repaired by the server (or rebuilt from the files)."""
        raise IndexStoreError(f"{self.describe()} cannot be repaired here; {self.repair_hint()}")

    def search(self, dense: np.ndarray | None, sparse: Sparse | None, k: int, where: Where | None,
               prefetch: int, unit: bool | None = None) -> Hits:
        """Top ``k`` points by dense, sparse, or (both given) RRF-fused ranking (``unit``: as for the edge store)."""
        from qdrant_client import models

        flt = self._filter(where)
        vectors = [DENSE] if unit is not None else False
        dense_q = np.asarray(dense, dtype=np.float32).tolist() if dense is not None else None
        sparse_q = models.SparseVector(indices=list(sparse[0]), values=list(sparse[1])) if sparse is not None else None
        if dense_q is not None and sparse_q is not None:
            result = self.client.query_points(
                self.collection, query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)), limit=k, with_payload=True,
                with_vectors=vectors, prefetch=[models.Prefetch(query=dense_q, using=DENSE, limit=prefetch, filter=flt),
                          models.Prefetch(query=sparse_q, using=SPARSE, limit=prefetch, filter=flt)],
            )
        else:
            result = self.client.query_points(self.collection, query=dense_q if dense_q is not None else sparse_q,
                                              using=DENSE if dense_q is not None else SPARSE, limit=k,
                                              with_payload=True, with_vectors=vectors, query_filter=flt)
        return _checked_hits(result.points, unit, self.damaged)

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


