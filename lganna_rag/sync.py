"""Bring a collection up to date with files and folders: incremental, crash-safe (``Index.add_files``).

The store itself is the only state. A file is *complete* when its points are exactly chunks ``0..n-1`` of its
current hash, recorded under its identity (resolved absolute path) and placement; anything else (a run killed
while writing or replacing it) is repaired by the next run, which writes only the missing chunks and then
deletes stale ones. Chunks are encoded without holding the store, so other processes can search between the
write steps.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from .bm25 import SparseEncoder
from .collection import FORMAT_VERSION, WRITE_BATCH, Collection, bad_vectors, model_metadata, probe, recorded_precision
from .ingest import (ID_NAMESPACE, Chunk, Chunker, FileRef, LoadedFile, Skip, StreamedFile, chunk_id, content_hash,
                     discover, file_identity, load_file, path_from_safe_name, safe_name)
from .stores import IndexStoreError

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import LGAnnaEncoder

DEFAULT_CHUNK_SIZE = 256
DEFAULT_OVERLAP = 32
STATE_FIELDS = ["path", "root", "source", "file_hash", "chunk", "n_chunks", "start", "end"]


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
            "load_seconds": round(self.load_seconds, 3), "chunks_per_second": round(self.chunks_per_second, 2),
            "interrupted": self.interrupted,
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


class ChunkWriter:
    """Embeds texts (dense + BM25) and writes them into a collection, creating it with the first batch."""

    def __init__(self, collection: Collection, encoder: Callable[[], "LGAnnaEncoder"], *, batch_size: int = 32,
                 quantization: str | None = None) -> None:
        """``encoder()`` gives the documents' encoder (loaded on first call)."""
        self.collection, self.encoder, self.batch_size, self.quantization = collection, encoder, batch_size, quantization
        self._sparse: SparseEncoder | None = None

    @property
    def sparse(self) -> SparseEncoder:
        """The BM25 sparse encoder with the collection's settings."""
        settings = self.collection.require()["bm25"]
        if self._sparse is None or self._sparse.settings["avg_len"] != float(settings["avg_len"]):
            self._sparse = SparseEncoder(settings["avg_len"], settings["k"], settings["b"], settings["language"])
        return self._sparse

    def ensure(self, sample_texts: Sequence[str], chunking: dict[str, int] | None) -> None:
        """Create the collection (model, BM25 settings estimated on ``sample_texts``, chunking) if it does not
        exist; record ``chunking`` on a collection created without it."""
        meta = self.collection.meta
        if meta is not None:
            if chunking is not None and meta.get("chunking") is None:
                self.collection.update(chunking=chunking)
            return
        from . import __version__

        meta = {
            "format_version": FORMAT_VERSION,
            "model": model_metadata(self.encoder()),
            "bm25": {"avg_len": SparseEncoder.estimate_avg_len(sample_texts), "k": 1.2, "b": 0.75, "language": "english"},
            "chunking": chunking,
            "points": None,
            "created_by": f"lganna-rag {__version__}",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if self.quantization:
            meta["quantization"] = self.quantization
        self.collection.create(meta)

    def write(self, ids: Sequence[str], texts: Sequence[str], payloads: Sequence[dict[str, Any]],
              dense: np.ndarray | None = None, should_stop: Callable[[], bool] | None = None) -> float | None:
        """Encode (unless ``dense`` is given) and upsert one batch; returns the seconds spent in the dense encoder, or
        ``None`` when ``should_stop`` (polled between encoder batches) stopped it before anything was written. The
        encoding runs without holding the store; the upsert holds it briefly."""
        t0 = time.perf_counter()
        if dense is None:
            recorded, running = recorded_precision(self.collection.meta), self.encoder().precision
            if recorded is not None and running != recorded:
                raise IndexStoreError(
                    f"collection {self.collection.name!r} holds document vectors made at precision {recorded}; this "
                    f"encoder runs at {running}: index it with --precision {recorded} (precision={recorded!r}). One "
                    f"collection keeps one precision for its documents; queries may use another (cosine >= 0.99)")
            parts = []
            for start in range(0, len(texts), self.batch_size):
                if should_stop is not None and parts and should_stop():
                    return None
                parts.append(self.encoder().encode_documents(list(texts[start:start + self.batch_size]),
                                                             batch_size=self.batch_size, show_progress_bar=False))
            dense = np.concatenate(parts)
        seconds = time.perf_counter() - t0
        sparse = self.sparse.documents(texts)
        with self.collection.store.session():
            self.collection.begin_write()
            self.collection.store.upsert(list(zip(ids, dense, sparse, payloads)))
        return seconds


def chunk_settings(collection: Collection, encoder: Callable[[], "LGAnnaEncoder"], chunk_size: int | None,
                   overlap: int | None) -> dict[str, int]:
    """Chunk settings: the collection's (given values must equal them), else the given ones or the defaults within
    the model's limit. Only a new collection needs the model loaded here."""
    saved = (collection.meta or {}).get("chunking")
    if saved:
        for name, key, given in (("chunk size", "size", chunk_size), ("overlap", "overlap", overlap)):
            if given is not None and saved[key] != given:
                raise IndexStoreError(f"collection {collection.name!r} was built with {name} {saved[key]}; pass the "
                                      f"same value (or leave it out), or rebuild the collection with --recreate")
        return {"size": saved["size"], "overlap": saved["overlap"]}
    enc = encoder()
    specials = len(enc.tokenize([""])[0][0])
    limit = enc.config.max_length - specials - 2
    size = chunk_size if chunk_size is not None else min(DEFAULT_CHUNK_SIZE, limit)
    if size > limit:
        raise ValueError(f"chunk size {size} is more than model {enc.name!r} can embed ({enc.config.max_length} tokens "
                         f"including {specials} special); use a chunk size of at most {limit}")
    ov = overlap if overlap is not None else min(DEFAULT_OVERLAP, size // 4)
    Chunker(enc.tokenizer, size, ov)  # validates the pair
    return {"size": size, "overlap": ov, "model_limit": limit}  # model_limit: the most text tokens a chunk can hold


class FolderSync:
    """One ``add_files`` run: discover, compare with the store, write what changed in batches, delete what went.
    See :meth:`lganna_rag.index.Index.add_files` for the rules."""

    def __init__(self, writer: ChunkWriter, *, chunking: dict[str, int],
                 progress: Callable[[IndexProgress], None] | None, should_stop: Callable[[], bool] | None,
                 load_seconds: Callable[[], float], loaded_before: float) -> None:
        """``load_seconds()`` is the model loading time so far, ``loaded_before`` its value when the run began (the
        difference is left out of the rates)."""
        self.writer, self.collection, self.store = writer, writer.collection, writer.collection.store
        self.chunking, self.progress_cb, self.should_stop = chunking, progress, should_stop
        self.load_seconds, self.loaded_before = load_seconds, loaded_before
        self.report = IndexReport()
        self.batch: list[tuple[str, str, dict[str, Any], str]] = []  # chunks waiting: (id, text, payload, file)
        self.pending: dict[str, dict[str, Any]] = {}  # per file: what remains once its chunks are written
        self._chunker: Chunker | None = None
        self.prog = IndexProgress()

    def chunker(self) -> Chunker:
        """The chunker for this run's settings (loads the model on first use)."""
        if self._chunker is None:
            self._chunker = Chunker(self.writer.encoder().tokenizer, self.chunking["size"], self.chunking["overlap"])
        return self._chunker

    def _emit(self, prog: IndexProgress, event: str) -> None:
        prog.event = event
        prog.load_seconds = self.load_seconds() - self.loaded_before
        if self.progress_cb:
            self.progress_cb(prog)

    def _stop(self) -> bool:
        if self.should_stop is not None and self.should_stop():
            self.report.interrupted = True
        return self.report.interrupted

    def run(self, paths: Sequence[str | os.PathLike], include: Sequence[str], exclude: Sequence[str],
            max_file_mb: float | None, prune: bool | None, started: float) -> IndexReport:
        """Index ``paths``; returns the report (``started``: the run's start, for its rates)."""
        found = discover(paths, include, exclude)
        report = self.report
        with self.store.session(open_shard=self.collection.exists):
            state, listed = file_state(self.collection)
            if self.collection.exists:
                self._verify(state, listed)
        prog = self.prog = IndexProgress(files_total=len(found.files), started=started)
        for s in found.skipped:
            (report.failed if s.failed else report.skipped).append(s)
        seen: set[str] = set()
        policy_skips: dict[str, str] = {}
        for ref in found.files:
            seen.add(ref.identity)
            prog.current = ref.source
            self._index_file(ref, load_file(ref, max_file_mb), state.get(ref.identity, {}), policy_skips)
            prog.files_done += 1
            self._emit(prog, "file")
            self._write_batches(prog)
            if self._stop():
                break
        if not report.interrupted:
            self._write_batches(prog, final=True)
        if not report.interrupted:  # deletions (an interrupted run leaves them to the next run)
            folder_roots = {safe_name(r.as_posix()) for r in found.folder_roots}
            blocked = [safe_name(p.as_posix()) for p in found.failed_folders]
            self._delete_gone(state, seen, policy_skips, folder_roots, blocked, prune)
        if self.collection.exists:
            with self.store.session():
                self.store.flush()
                if report.chunks_written or report.chunks_deleted:
                    self.store.optimize()
                self.collection.end_write()
        report.seconds = time.perf_counter() - started
        report.load_seconds = self.load_seconds() - self.loaded_before
        self._emit(prog, "done")
        return report

    def _verify(self, state: dict[str, dict[str, dict[str, Any]]], listed: int) -> None:
        """Check what the run relies on before trusting the store: every point is listed, has its payload, and
        the dense vectors answer a query. Points whose payload was lost are deleted (their files are then
        incomplete and get re-indexed); anything else is a :class:`~lganna_rag.stores.StoreDamagedError`."""
        total = self.collection.checked_count()
        ghosts = self.store.count_empty("text")
        if ghosts:
            self.collection.begin_write()
            self.store.delete_empty("text")
            self.report.repairs.append(f"deleted {ghosts} chunks whose payload was lost; their files are re-indexed")
            total = self.store.count()
            for ident in [i for i, pts in state.items() if any(not p for p in pts.values())]:
                state[ident] = {pid: p for pid, p in state[ident].items() if p}
        if total != listed - ghosts:
            raise self.store.damaged(f"it counts {total} chunks but lists {listed - ghosts}")
        if total:
            probe(self.collection, total)
            damaged = bad_vectors(self.collection)
            if damaged:
                raise self.store.damaged(f"{damaged} chunks have damaged vectors (non-finite values, or not of unit "
                                         f"length)")

    def _index_file(self, ref: FileRef, loaded: LoadedFile | StreamedFile | Skip,
                    existing: dict[str, dict[str, Any]], policy_skips: dict[str, str]) -> None:
        """Plan one file: skipped, unchanged, or its missing chunks queued."""
        report = self.report
        if isinstance(loaded, Skip):
            (report.failed if loaded.failed else report.skipped).append(loaded)
            if not loaded.failed:
                policy_skips[ref.identity] = loaded.reason
            return
        root, source = _placement(ref, existing)
        fields = {"path": ref.identity, "root": root, "source": source}
        report.warnings.extend((source, w) for w in loaded.warnings)
        if _is_complete(existing, loaded.file_hash, fields):
            report.unchanged.append(source)
            return
        self._plan_file(ref.identity, fields, loaded, existing)

    def _chunks(self, loaded: LoadedFile | StreamedFile) -> tuple[Iterator[Chunk], int | None]:
        """A file's chunks and their number (``None`` for a streamed file: known once its last segment is read)."""
        if isinstance(loaded, LoadedFile):
            chunks = self.chunker().split(loaded.text)
            return iter(chunks), len(chunks)

        def streamed() -> Iterator[Chunk]:
            index = 0
            for offset, text in loaded.segments():
                for c in self.chunker().split(text):
                    yield Chunk(index, offset + c.start, offset + c.end, c.text)
                    index += 1

        return streamed(), None

    def _plan_file(self, key: str, fields: dict[str, str], loaded: LoadedFile | StreamedFile,
                   existing: dict[str, dict[str, Any]]) -> None:
        """Queue the chunks of a new or changed file that are not in the store yet, writing full batches as they
        fill (a streamed file's chunks are never all in memory; they record ``n_chunks`` -1 until it is done)."""
        chunks, total = self._chunks(loaded)
        job: dict[str, Any] = {"source": fields["source"], "remaining": 0, "repayload": [], "stale": [],
                               "planned": False, "ids": [] if total is None else None}
        self.pending[key] = job
        new_ids = set()
        for c in chunks:
            pid = chunk_id(key, c.index, c.text)
            new_ids.add(pid)
            if job["ids"] is not None:
                job["ids"].append(pid)
            wanted = {**fields, "chunk": c.index, "n_chunks": -1 if total is None else total, "start": c.start,
                      "end": c.end, "file_hash": loaded.file_hash}
            old = existing.get(pid)
            if old is None:
                self.batch.append((pid, c.text, {**wanted, "text": c.text}, key))
                job["remaining"] += 1
            else:
                self.report.chunks_reused += 1
                if any(old.get(f) != v for f, v in wanted.items()):
                    job["repayload"].append((pid, wanted))
            if len(self.batch) >= WRITE_BATCH:
                self._write_batches(self.prog)
                if self.report.interrupted:
                    return  # the file stays pending: the next run finishes it
        job["stale"] = [pid for pid in existing if pid not in new_ids]
        job["planned"] = True
        if job["remaining"] == 0:
            self._finish(key)

    def _finish(self, key: str) -> None:
        """All new chunks of a file are written: update moved chunks, then delete stale ones (a streamed file's
        chunks get their count first)."""
        job = self.pending.pop(key)
        if job["repayload"] or job["stale"] or job["ids"]:
            with self.store.session():
                self.collection.begin_write()
                for pid, fields in job["repayload"]:
                    self.store.set_payload(pid, fields)
                if job["ids"]:
                    self.store.set_payload(job["ids"], {"n_chunks": len(job["ids"])})
                if job["stale"]:
                    self.store.delete(ids=job["stale"])
            self.report.chunks_deleted += len(job["stale"])
        self.report.indexed.append(job["source"])

    def _write_batches(self, prog: IndexProgress, final: bool = False) -> None:
        """Write queued chunks in steps of WRITE_BATCH (all of them if ``final``), polling ``should_stop``."""
        while len(self.batch) >= WRITE_BATCH or (final and self.batch):
            step, self.batch = self.batch[:WRITE_BATCH], self.batch[WRITE_BATCH:]
            self.writer.ensure([b[1] for b in step], self.chunking)
            seconds = self.writer.write([b[0] for b in step], [b[1] for b in step], [b[2] for b in step],
                                        should_stop=self.should_stop)
            if seconds is None:  # stopped while encoding: nothing of this step was written
                self.report.interrupted = True
                return
            self.report.encode_seconds += seconds
            self.report.chunks_written += len(step)
            for *_, key in step:
                self.pending[key]["remaining"] -= 1
            for key in [k for k, job in self.pending.items() if job["remaining"] == 0 and job["planned"]]:
                self._finish(key)
            prog.chunks_written, prog.chunks_pending = self.report.chunks_written, len(self.batch)
            self._emit(prog, "batch")
            if self._stop():
                return

    def _delete_gone(self, state: dict[str, dict[str, dict[str, Any]]], seen: set[str], policy_skips: dict[str, str],
                     folder_roots: set[str], blocked: list[str], prune: bool | None) -> None:
        """Remove the chunks of files under a walked folder that are gone (or, with ``prune``, left out), and of
        files recorded under one of these folders whose path lies outside it."""
        report = self.report
        gone = {key: f"now skipped: {reason}" for key, reason in policy_skips.items()}
        for key in sorted(state):
            root = next((r for r in folder_roots if _inside(key, r)), None)
            if key in seen or key in gone or any(_inside(key, b) for b in blocked):
                continue
            if root is None:
                if any(p.get("root") in folder_roots for p in state[key].values()):
                    gone[key] = "outside the folder it was indexed under"
                continue
            if not _exists(key):
                if prune is not False:
                    gone[key] = "no longer exists"
            elif prune:
                gone[key] = "not part of this run (--include/--exclude, or skipped); removed by --prune"
            else:
                report.kept.append(key[len(root) + 1:])
        for key, reason in sorted(gone.items()):
            if state.get(key):
                with self.store.session():
                    self.collection.begin_write()
                    self.store.delete(ids=list(state[key]))
                report.chunks_deleted += len(state[key])
                root = next((r for r in folder_roots if _inside(key, r)), None)
                shown = key[len(root) + 1:] if root else next(iter(state[key].values())).get("source", key)
                report.pruned.append(shown)
                report.removed.append((shown, reason))


def add_texts(writer: ChunkWriter, texts: Sequence[str], metadatas: Sequence[dict[str, Any]] | None,
              ids: Sequence[str | int] | None, vectors: np.ndarray | None) -> list[str]:
    """Store ``texts`` as they are (see :meth:`lganna_rag.index.Index.add_texts`); returns their point ids."""
    from .encoder import check_texts

    texts = check_texts(texts)
    if vectors is not None:
        dim = writer.encoder().dimension
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(texts), dim):
            raise ValueError(f"vectors have shape {vectors.shape}; expected ({len(texts)}, {dim})")
    for name, given in (("metadatas", metadatas), ("ids", ids)):
        if given is not None and len(given) != len(texts):
            raise ValueError(f"got {len(given)} {name} for {len(texts)} texts")
    if not texts:
        return []
    payloads, point_ids = [], []
    for i, text in enumerate(texts):
        meta = dict(metadatas[i]) if metadatas is not None else {}
        payload = {**meta, "text": text}
        if ids is not None:
            pid = point_id(ids[i])
            if pid != str(ids[i]):
                payload["doc_id"] = ids[i]
        else:
            key = json.dumps(meta, sort_keys=True, default=str)
            pid = str(uuid.uuid5(ID_NAMESPACE, f"text\x00{content_hash(text)}\x00{key}"))
        payloads.append(payload)
        point_ids.append(pid)
    writer.ensure(texts[:WRITE_BATCH], None)
    for start in range(0, len(texts), WRITE_BATCH):
        end = start + WRITE_BATCH
        writer.write(point_ids[start:end], texts[start:end], payloads[start:end],
                     vectors[start:end] if vectors is not None else None)
    store = writer.collection.store
    with store.session():
        store.flush()
        store.optimize()
        writer.collection.end_write()
    return point_ids


def files_of(collection: Collection) -> dict[str, int]:
    """Chunk count per indexed file (its identity); texts added without a source are not listed."""
    out: dict[str, int] = {}
    if not collection.exists:
        return out
    for _, p in collection.store.scroll(["path", "root", "source"]):
        if p.get("source") is None:
            continue
        name = point_file(p) or str(p["source"])
        out[name] = out.get(name, 0) + 1
    return out


def delete_chunks(collection: Collection, ids: Sequence[str | int] | None, where: dict[str, Any] | None,
                  paths: Sequence[str | os.PathLike] | None) -> int:
    """Delete chunks by point id, payload filter or file/folder paths (see ``Index.delete``); returns how many."""
    store = collection.store
    with store.session():
        collection.refresh()
        before = collection.checked_count()
        collection.begin_write()
        if ids is not None:
            store.delete(ids=[point_id(i) for i in ids])
        elif where is not None:
            store.delete(where=where)
        else:
            targets = target_identities(paths or [])
            store.delete(ids=[pid for pid, p in store.scroll(["path", "root", "source"]) if under(p, targets)])
        store.flush()
        collection.end_write()
        return before - store.count()


def point_id(value: str | int) -> str:
    """A Qdrant point id for a user id: UUIDs and non-negative ints as they are, anything else via UUIDv5."""
    if isinstance(value, int) and value >= 0:
        return str(uuid.UUID(int=value))
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return str(uuid.uuid5(ID_NAMESPACE, f"id\x00{value}"))


def file_state(collection: Collection) -> tuple[dict[str, dict[str, dict[str, Any]]], int]:
    """Existing chunks of every indexed file, by file identity (resolved absolute path):
    ``{path: {id: payload fields}}``, and the number of points listed (files' and others').

    Chunks written before files had one identity (no ``path`` field: recorded by ``(root, source)``)
    are found by the path they name, so re-indexing such a file replaces them too.
    """
    state: dict[str, dict[str, dict[str, Any]]] = {}
    listed = 0
    if not collection.exists:
        return state, 0
    for pid, p in collection.store.scroll(STATE_FIELDS):
        listed += 1
        ident = p.get("path")
        if not ident:
            if not p.get("root") or p.get("source") is None:
                continue  # add_texts points: not files
            ident = _legacy_identity(p["root"], p["source"])
        state.setdefault(ident, {})[pid] = p
    return state, listed


def point_file(payload: dict[str, Any]) -> str | None:
    """The identity of the file a point belongs to (``None`` for texts added without a file)."""
    if payload.get("path"):
        return payload["path"]
    if payload.get("root") and payload.get("source") is not None:
        return _legacy_identity(payload["root"], payload["source"])
    return None


def under(payload: dict[str, Any], targets: Sequence[str]) -> bool:
    """Whether a point's file is one of ``targets`` (identities) or inside one of them, or was recorded under a
    folder that is (a file outside the folder it was recorded under goes with that folder)."""
    path = point_file(payload)
    if path is None:
        return False
    root = payload.get("root")
    return any(_inside(path, t) or (root and _inside(root, t) and not _inside(path, root)) for t in targets)


def outside_root(payload: dict[str, Any]) -> bool:
    """Whether a point's file lies outside the folder it was recorded under (it can only have been reached by a
    link swapped in while indexing: such chunks are reported by ``check`` and removed by the next run)."""
    path, root = payload.get("path"), payload.get("root")
    return bool(path and root) and not _inside(path, root)


def target_identities(paths: Sequence[str | os.PathLike]) -> list[str]:
    """File identities (resolved absolute paths) of ``paths``, for deleting their chunks."""
    from pathlib import Path

    return [file_identity(Path(p).expanduser()) for p in paths]


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
