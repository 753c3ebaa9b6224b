"""A collection's record in its store: the model that made its vectors, the BM25 and chunk settings, the chunk
count recorded after each write, and the query adapter; plus the checks that keep a damaged store from giving
wrong answers (:func:`verify`, :func:`probe`, :func:`check`) and the repair (:func:`rebuild`).

A collection remembers its model: opening it with another one is a :class:`ModelMismatchError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from .ingest import chunk_id
from .stores import IndexStoreError, Store, StoreDamagedError, damaged_rows

if TYPE_CHECKING:  # pragma: no cover
    from .bm25 import SparseEncoder
    from .encoder import LGAnnaEncoder

FORMAT_VERSION = 1
DEFAULT_COLLECTION = "default"
#: Chunks encoded and written per step (Ctrl-C stops after the current step).
WRITE_BATCH = 256
_MODEL_KEYS = ("name", "dimension", "pooling", "normalize", "prompt_template", "prompt_version")


class ModelMismatchError(IndexStoreError):
    """The collection was built with another model (or prompt format) than the one given."""


class CollectionNotFoundError(IndexStoreError):
    """The collection does not exist yet."""


def model_metadata(encoder: "LGAnnaEncoder") -> dict[str, Any]:
    """What a collection records about the model that made its vectors (and the CPU precision it ran at)."""
    c = encoder.config
    return {"name": encoder.name, "dimension": encoder.dimension, "pooling": c.pooling, "normalize": c.normalize,
            "prompt_template": c.prompt_template, "prompt_version": c.prompt_version,
            "precision": getattr(encoder, "precision", "fp32")}


def recorded_precision(meta: dict[str, Any] | None) -> str | None:
    """The precision a collection's document vectors were made at (collections from before it was recorded: fp32),
    ``None`` for a collection not created yet."""
    return meta["model"].get("precision", "fp32") if meta else None


def _describe_model(m: dict[str, Any]) -> str:
    return (f"{m.get('dimension')}-d vectors from model {m.get('name')!r} (pooling {m.get('pooling')}, prompt template "
            f"{m.get('prompt_template') or 'none'} v{m.get('prompt_version')})")


class Collection:
    """The metadata of collection ``name`` in ``store``, re-read whenever another process may have changed it."""

    def __init__(self, store: Store, name: str) -> None:
        """Read the collection's metadata (``None`` until it is created)."""
        self.store, self.name = store, name
        self.meta: dict[str, Any] | None = store.metadata()
        self._generation = store.generation

    @property
    def exists(self) -> bool:
        """Whether the collection has been created."""
        return self.meta is not None

    def refresh(self) -> None:
        """Re-read the metadata if the store was reopened since (another process may have written it)."""
        if self.store.generation != self._generation:
            self._generation = self.store.generation
            self.meta = self.store.metadata()

    def require(self) -> dict[str, Any]:
        """The metadata, or :class:`CollectionNotFoundError` naming the store's collections."""
        if self.meta is None:
            raise CollectionNotFoundError(self.missing_message())
        return self.meta

    def missing_message(self) -> str:
        """Why this collection cannot be read: it does not exist; names the store's collections that do."""
        try:
            others = self.store.list_collections()
        except Exception:  # noqa: BLE001 - the listing is a hint; the message must not fail
            others = []
        option = "" if self.name == DEFAULT_COLLECTION else f" --collection {self.name}"
        have = (f"it holds {', '.join(repr(c) for c in others)} (pick one with --collection NAME)" if others
                else "it holds no collections yet")
        return (f"collection {self.name!r} does not exist in {self.store.location()}; {have}; "
                f"or index something first: lganna-rag index PATH{option}")

    def check_model(self, mine: dict[str, Any]) -> None:
        """Raise :class:`ModelMismatchError` unless ``mine`` (model metadata, or just a name) fits the collection."""
        theirs = self.meta["model"] if self.meta else None
        if theirs is None:
            return
        if any(theirs.get(k) != mine.get(k) for k in (_MODEL_KEYS if "dimension" in mine else ("name",))):
            given = _describe_model(mine) if "dimension" in mine else f"vectors from model {mine['name']!r}"
            raise ModelMismatchError(
                f"collection {self.name!r} in {self.store.describe()} holds {_describe_model(theirs)}; "
                f"the model given makes {given}. Use --model {theirs.get('name')} (Index(model=...)) "
                f"with this collection, pick another collection (--collection NEW), or rebuild it with --recreate."
            )

    def create(self, meta: dict[str, Any]) -> None:
        """Create the collection in the store with ``meta``."""
        self.store.create(meta)
        self.meta = meta

    def update(self, **changes: Any) -> None:
        """Write the metadata with ``changes`` (a ``None`` value removes the key), re-read first under the store."""
        with self.store.session(open_shard=False):
            meta = self.store.metadata() or self.require()
            for key, value in changes.items():
                if value is None:
                    meta.pop(key, None)
                else:
                    meta[key] = value
            self.store.update_metadata(meta)
            self.meta = meta

    # -- the chunk count recorded after each write (a local shard can silently lose points)
    def begin_write(self) -> None:
        """Mark the recorded count stale before the first change of a run (a killed run leaves it unset)."""
        if self.store.tracks_count and self.meta is not None and self.meta.get("points") is not None:
            self.update(points=None)
            self.meta["points"] = None

    def end_write(self) -> None:
        """Record the count once the run's changes are flushed."""
        if self.store.tracks_count and self.meta is not None:
            count = self.store.count()
            if self.meta.get("points", -1) != count:
                self.update(points=count)

    def checked_count(self, exact: bool = True) -> int:
        """The store's chunk count, checked against the count recorded after the last complete write
        (``exact=False``: from the shard's statistics when they agree with the record, for searches)."""
        recorded = (self.meta or {}).get("points")
        if not exact and self.store.tracks_count:
            quick = self.store.quick_count()
            if recorded is None or quick == recorded:
                return quick
        n = self.store.count()
        if self.store.tracks_count and recorded is not None and n != recorded:
            raise self.store.damaged(f"it counts {n} chunks where {recorded} were recorded after the last write "
                                     f"(lost id mappings?)")
        return n

    # -- the query adapter (lganna-rag adapt)
    @property
    def adapter_record(self) -> dict[str, Any] | None:
        """The collection's adapter record (``dir``, ``name``, how it was made), ``None`` without one."""
        record = (self.meta or {}).get("adapter")
        return record if record and self.store.local_dir is not None else None

    @property
    def adapters_dir(self) -> Path | None:
        """The folder that holds this collection's adapters (``None`` for a server's collection)."""
        return self.store.local_dir / "adapters" if self.store.local_dir is not None else None

    def adapter_dir(self) -> Path | None:
        """The folder of the current adapter, ``None`` when it has none."""
        record, folder = self.adapter_record, self.adapters_dir
        return folder / record["dir"] if record and folder is not None else None


# ------------------------------------------------------------------------------------------ checks and repair
def probe(collection: Collection, total: int) -> None:
    """A dense query must return min(total, 10) chunks, each with its text, or the store is damaged."""
    dim = int(collection.require()["model"]["dimension"])
    want = min(total, 10)
    hits = collection.store.search(np.full(dim, dim ** -0.5, dtype=np.float32), None, want, None, want)
    if len(hits) < want or any("text" not in p for _, _, p in hits):
        raise collection.store.damaged(f"a query over {total} chunks returned {len(hits)} (or chunks without their "
                                       f"text)")


def bad_vectors(collection: Collection) -> int:
    """How many stored dense vectors no model made: non-finite values, or a norm far from 1 where the model
    normalises (bytes overwritten on disk)."""
    model = collection.require()["model"]
    dim, unit = int(model["dimension"]), bool(model.get("normalize", True))
    damaged, page = 0, []
    for _, vec in collection.store.dense_vectors():
        if vec is not None and len(vec) == dim:
            page.append(vec)
        if len(page) >= 1024:
            damaged, page = damaged + damaged_rows(np.asarray(page), unit), []
    return damaged + (damaged_rows(np.asarray(page), unit) if page else 0)


class _Audit:
    """What one pass over every stored point finds (see :func:`check`)."""

    def __init__(self, collection: Collection, sparse: "SparseEncoder",
                 files_of: Callable[[dict[str, Any]], str | None]) -> None:
        model = collection.require()["model"]
        self.dim, self.unit = int(model["dimension"]), bool(model.get("normalize", True))
        self.sparse, self.files_of = sparse, files_of
        self.listed = self.unreadable = self.damaged = self.wrong_ids = self.wrong_bm25 = 0
        self.files: dict[str, list[dict[str, Any]]] = {}
        self.by_field: dict[str, dict[Any, int]] = {"path": {}, "source": {}}

    def add(self, pid: str, payload: dict[str, Any], dense: list[float] | None,
            sparse: tuple[list[int], list[float]] | None) -> None:
        """Audit one point: its vectors read back and are possible, its id and BM25 vector fit its text."""
        self.listed += 1
        ident = self.files_of(payload)
        if ident is not None:
            self.files.setdefault(ident, []).append(payload)
        for key, seen in self.by_field.items():
            if payload.get(key) is not None:
                seen[payload[key]] = seen.get(payload[key], 0) + 1
        if dense is None or len(dense) != self.dim or sparse is None:
            self.unreadable += 1
            return
        self.damaged += damaged_rows(np.asarray([dense]), self.unit)
        text = payload.get("text")
        if not isinstance(text, str):
            return
        if payload.get("path") and isinstance(payload.get("chunk"), int) and chunk_id(payload["path"], payload["chunk"], text) != pid:
            self.wrong_ids += 1
        want_idx, want_val = self.sparse.documents([text])[0]
        order = np.argsort(sparse[0])
        if (list(np.asarray(sparse[0])[order]) != sorted(want_idx) or not np.allclose(
                np.asarray(sparse[1])[order], np.asarray(want_val)[np.argsort(want_idx)], rtol=1e-3, atol=1e-5)):
            self.wrong_bm25 += 1

    def problems(self) -> list[str]:
        """The problems found, as sentences."""
        found = [(self.unreadable, "have unreadable vectors"),
                 (self.damaged, "have damaged vectors (non-finite values, or not of unit length)"),
                 (self.wrong_ids, "do not match their id (their text, file or position was changed on disk)"),
                 (self.wrong_bm25, "have a BM25 vector that does not match their text")]
        return [f"{n} chunks {what}" for n, what in found if n]


def check(collection: Collection, sparse: "SparseEncoder", files_of: Callable[[dict[str, Any]], str | None],
          state_fields: list[str], outside: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Verify a collection's store: every point is counted, listed, has its payload and vectors; every dense vector
    is one a model could make; every file chunk's id fits its text and every BM25 vector its text; the payload
    indexes find what is listed; a dense query answers; every file's chunks form one version; no file lies
    outside the folder it was recorded under (``outside(payload)``). ``files_of(payload)`` names a point's file.
    Returns ``{"chunks", "files", "problems", "incomplete_files", "outside_files", "damaged", "repaired",
    "lost"}``; ``damaged``: a problem that a repair (re-embedding every readable chunk) fixes."""
    store = collection.store
    problems: list[str] = []
    total = 0
    audit = _Audit(collection, sparse, files_of)
    try:
        with store.session():
            total = store.count()
            recorded = (collection.meta or {}).get("points")
            if store.tracks_count and recorded is not None and recorded != total:
                problems.append(f"the store counts {total} chunks where {recorded} were recorded after the last write")
            for pid, payload, dense, sp in store.records([*state_fields, "text"]):
                audit.add(pid, payload, dense, sp)
            if total != audit.listed:
                problems.append(f"the store counts {total} chunks but lists {audit.listed}")
            ghosts = store.count_empty("text")
            if ghosts:
                problems.append(f"{ghosts} chunks lost their payload (text, source)")
            problems += audit.problems()
            mismatched = [f"{k}={v!r}" for k, seen in audit.by_field.items() for v, n in seen.items()
                          if store.count({k: v}) != n]
            if mismatched:
                problems.append(f"the payload index finds other chunks than are stored for {len(mismatched)} values "
                                f"(e.g. {mismatched[0]})")
            if total:
                probe(collection, total)
    except StoreDamagedError as exc:
        problems.append(str(exc).split("; repair it with")[0])
    incomplete = [ident for ident, pts in sorted(audit.files.items()) if not _one_version(pts)]
    stray = sorted({p["path"] for pts in audit.files.values() for p in pts if outside(p)})
    damaged = bool(problems)
    if stray:
        problems.append(f"{len(stray)} files lie outside the folder they were indexed under (`lganna-rag index` of "
                        f"that folder removes them)")
    return {"chunks": total, "files": len(audit.files), "problems": problems, "incomplete_files": incomplete,
            "outside_files": stray, "damaged": damaged, "repaired": False, "lost": 0}


def payload_keys(collection: Collection, sample: int = 256) -> list[str]:
    """Payload keys of the collection's chunks (from the first ``sample`` points): what ``where`` can filter on."""
    keys: set[str] = set()
    if not collection.exists:
        return []
    for i, (_, p) in enumerate(collection.store.scroll(True)):
        keys.update(p)
        if i + 1 >= sample:
            break
    return sorted(keys)


def explain_short_result(collection: Collection, raw: list[Any], k: int, where: dict[str, Any] | None, *,
                         dense: bool) -> None:
    """Fewer than ``k`` hits: an unknown ``where`` key is a ValueError; a dense ranking that misses chunks the
    collection holds means the store is damaged (never a silent short answer)."""
    store = collection.store
    if where:
        unknown = [key for key in where if store.count({key: where[key]}) == 0
                   and store.count_empty(key) == store.count()]
        if unknown:
            raise ValueError(f"unknown filter key {unknown[0]!r}: no chunk has it; the chunks' payload keys are "
                             f"{', '.join(payload_keys(collection))}")
    if dense:
        expected = min(k, store.count(where))
        if len(raw) < expected:
            raise store.damaged(f"a search returned {len(raw)} of the {expected} chunks it should have (unreadable "
                                f"vectors)")


def _one_version(points: list[dict[str, Any]]) -> bool:
    """Whether a file's points are all its chunks of one version."""
    n = {p.get("n_chunks") for p in points}
    return len(n) == 1 and len(points) == next(iter(n)) and len({p.get("file_hash") for p in points}) == 1


def rebuild(collection: Collection, encoder: "LGAnnaEncoder", sparse: "SparseEncoder", batch_size: int,
            progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
    """Re-embed every readable chunk into a new shard; returns (chunks kept, chunks lost)."""
    store = collection.store
    try:
        rows = list(store.scroll(True))
    except StoreDamagedError:
        raise StoreDamagedError(
            f"the store {store.describe()} is damaged beyond repair (its chunks cannot be read); rebuild it "
            f"from your files with `lganna-rag index PATHS --recreate --path {store.location()}`"
        ) from None
    good = [(pid, p) for pid, p in rows if isinstance(p.get("text"), str)]

    def points() -> Iterator[tuple[str, np.ndarray, tuple[list[int], list[float]], dict[str, Any]]]:
        for start in range(0, len(good), WRITE_BATCH):
            step = good[start:start + WRITE_BATCH]
            texts = [p["text"] for _, p in step]
            dense = encoder.encode_documents(texts, batch_size=batch_size, show_progress_bar=False)
            yield from zip([pid for pid, _ in step], dense, sparse.documents(texts), [p for _, p in step])
            if progress:
                progress(min(start + WRITE_BATCH, len(good)), len(good))

    recorded = (collection.meta or {}).get("points")
    collection.begin_write()
    kept = store.replace_shard(points())
    collection.end_write()
    return kept, max(len(rows), recorded or 0) - len(good)
