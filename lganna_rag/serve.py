"""``lganna-rag serve``: an OpenAI-compatible embeddings server (and search over one collection) on Starlette + uvicorn.

One process holds one loaded encoder (and optionally one :class:`~lganna_rag.index.Index`), so each
request pays only for its forward pass, not for importing torch and loading the model.

Endpoints (JSON; errors are OpenAI-style ``{"error": {"message", "type", "param", "code"}}``, bad input is
always a 4xx):

- ``POST /v1/embeddings``: OpenAI's request (``input``: a string or a list of strings, ``model``,
  ``encoding_format``: ``float`` or ``base64``) and response (``data[i].embedding``, ``usage``). Extension:
  ``input_type`` (``"document"``, the default, embeds text as given; ``"query"`` adds the task
  instruction as ``encode_queries`` does), ``task`` (a registered task name) or ``instruction`` (free text),
  ``examples`` (few-shot ``[query, response]`` pairs).
- ``GET /v1/models``, ``GET /health`` (no key needed), ``POST /v1/search`` (``query``, ``k``, ``mode``:
  ``hybrid`` (default), ``dense`` or ``sparse``, ``filter`` (checked by :func:`lganna_rag.filters.check_where`),
  ``task``/``instruction``/``examples``) over the served collection; hits carry ``id``, ``score``, ``source``,
  ``chunk``, ``start``/``end`` (the span) and ``text``. Search queries are embedded exactly as
  :meth:`Index.search <lganna_rag.index.Index.search>` embeds them: with the collection's query encoder (its
  ``lganna-rag adapt`` adapter, when it has one; ``/health`` and ``/v1/models`` name it).

:class:`EncodeQueue` runs every forward pass on one worker thread. Concurrent requests are merged into shared
passes, and large requests are split into passes of at most ``max_batch`` texts and ``max_batch_tokens``
estimated tokens, taken in turns: a request that has not started yet goes before the rest of one that has, so
a small request never waits for a large one to finish (no head-of-line blocking). The queue is bounded (in
texts): above the bound a request gets 429 with ``Retry-After``.

Starlette + uvicorn were chosen over FastAPI because the server is five routes with hand-written
OpenAI-shaped validation errors: FastAPI's value (pydantic models, OpenAPI pages) would bring its own
422 error shape that OpenAI clients do not expect, and one more dependency.

Starlette and uvicorn are imported only when a server is built (``pip install 'lganna-rag[serve]'``).
Measured throughput and latency: README's "Serving" section and ``benchmarks/results/serve.md``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import math
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import LGAnnaEncoder
    from .index import Index
    from .prompts import Task

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8088
API_KEY_ENV = "LGANNA_API_KEY"

#: ``encode(texts, prompt_lengths) -> (vectors, token_counts)``: one forward-pass group (see :func:`encode_with_usage`).
EncodeFn = Callable[[list[str], list[int]], tuple[np.ndarray, list[int]]]
#: ``prepare(texts) -> (rendered texts, prompt_lengths)``: run on the worker thread just before encoding.
PrepareFn = Callable[[list[str]], tuple[list[str], list[int]]]


@dataclass
class ServeSettings:
    """Limits and batching knobs of a server."""

    #: Most texts one forward-pass group takes; a larger request is split into several groups.
    max_batch: int = 64
    #: How long an idle queue waits for more requests once one arrived (milliseconds). 0: start at once;
    #: requests that arrive while a batch is encoding still go together into the next one.
    max_wait_ms: float = 0.0
    #: Texts waiting or being encoded, at most; more gets 429 + Retry-After.
    max_queue: int = 4096
    #: Inputs per embeddings request, at most (413 above).
    max_inputs: int = 2048
    #: Characters per input, at most (400 above).
    max_chars: int = 50_000
    #: Request body size, at most (413 above).
    max_body_bytes: int = 16 * 1024 * 1024
    #: Inner batch size of the encoder's forward passes.
    batch_size: int = 32
    #: Bearer token required on /v1/* (None: no auth).
    api_key: str | None = None
    #: Largest k for /v1/search.
    max_k: int = 1000
    #: Estimated tokens (:func:`estimate_tokens`) one forward-pass group takes, at most (a single longer text
    #: still goes, alone): it bounds how long other requests wait between two groups of a large one.
    max_batch_tokens: int = 8192

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_inputs", "max_chars", "max_body_bytes", "batch_size", "max_k",
                     "max_batch_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        if self.max_inputs > self.max_queue:
            raise ValueError(f"max_inputs ({self.max_inputs}) must not exceed max_queue ({self.max_queue}): "
                             f"a full request could never be queued")


class Overloaded(Exception):
    """The queue is full; ``retry_after`` is a whole number of seconds to wait."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy; retry after {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The queue no longer accepts work."""


def estimate_tokens(text: str, max_length: int | None = None) -> int:
    """A cheap token-count estimate of ``text`` for batch budgets (about four UTF-8 bytes a token, plus the special
    tokens), at most ``max_length`` (the model truncates there)."""
    n = len(text.encode("utf-8", "surrogatepass")) // 4 + 2
    return min(n, max_length) if max_length else n


@dataclass(eq=False)
class _Job:
    """One request in the queue: its texts are handed to the encoder in order, in one or more groups."""

    texts: list[str]
    prompt_lengths: list[int]
    costs: list[int]
    encode: EncodeFn
    prepare: PrepareFn | None
    future: asyncio.Future
    taken: int = 0  # texts handed to the encoder so far
    cost: int = 0  # estimated tokens of all its texts
    vectors: list[np.ndarray] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    @property
    def left(self) -> int:
        """Texts not handed to the encoder yet."""
        return len(self.texts) - self.taken

    @property
    def encoded(self) -> int:
        """Texts whose vectors came back."""
        return len(self.tokens)


@dataclass
class _Part:
    """Texts ``start:end`` of ``job`` in one forward-pass group."""

    job: _Job
    start: int
    end: int


@dataclass
class BatcherStats:
    """Counters since start (``requests``: submitted requests; ``batches``: forward-pass groups)."""

    requests: int = 0
    texts: int = 0
    batches: int = 0
    rejected: int = 0
    encode_seconds: float = 0.0
    largest_batch: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {**self.__dict__, "encode_seconds": round(self.encode_seconds, 3),
                "mean_batch": round(self.texts / self.batches, 2) if self.batches else 0.0}


def _encode_parts(encode: EncodeFn, parts: list[_Part]
                  ) -> tuple[list[_Part], list[tuple[_Job, Exception]], Any, list[int]]:
    """Worker thread: prepare each part (a request whose rendering fails fails alone), then one ``encode`` call.

    Returns the parts that were encoded, the failed jobs, and the vectors and token counts of the encoded parts."""
    texts: list[str] = []
    lengths: list[int] = []
    ok, failed = [], []
    for part in parts:
        job = part.job
        try:
            if job.prepare is not None:
                rendered, plens = job.prepare(job.texts[part.start:part.end])
            else:
                rendered, plens = job.texts[part.start:part.end], job.prompt_lengths[part.start:part.end]
        except Exception as exc:  # noqa: BLE001  (the request gets its own error)
            failed.append((job, exc))
            continue
        ok.append(part)
        texts += rendered
        lengths += plens
    if not texts:
        return ok, failed, None, []
    vectors, tokens = encode(texts, lengths)
    return ok, failed, vectors, list(tokens)


class EncodeQueue:
    """Runs encode requests on one worker thread: merges small concurrent ones, splits large ones, takes turns.

    A forward-pass group holds at most ``max_batch`` texts and ``max_batch_tokens`` estimated tokens (a single
    longer text goes alone), and only texts of one ``encode`` function (one encoder). New requests that fit in
    one group are merged whole into shared groups; larger ones are split, and take turns group by group (a new
    one first, then the started ones in rotation). Groups of small requests and turns of large ones alternate
    while both wait: a small request waits for at most the group being encoded and one group of the large
    requests, never for a large request to finish, and a stream of small requests cannot starve a large one.
    A request waits at most ``max_wait_ms`` for company when the worker is idle. At most ``max_queue`` texts
    may be queued or in flight; :meth:`submit` raises :class:`Overloaded` beyond that.
    """

    def __init__(self, encode: EncodeFn, *, max_batch: int = 64, max_wait_ms: float = 0.0, max_queue: int = 4096,
                 max_batch_tokens: int | None = None) -> None:
        """Create an idle queue around the default ``encode``; call :meth:`start` inside the running event loop."""
        self._encode = encode
        self.max_batch = max_batch
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._fresh: deque[_Job] = deque()  # not started, in arrival order
        self._started: deque[_Job] = deque()  # partly handed to the encoder, in turn order
        self._last_small = False  # whether the last group was new requests that fit in one group
        self._queued_texts = 0
        self._pending = 0  # queued + being encoded
        self._closed = False
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lganna-encode")
        self._rate = 0.0  # texts/s, moving average
        self.stats = BatcherStats()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def pending(self) -> int:
        """Texts queued or being encoded."""
        return self._pending

    def start(self) -> None:
        """Start the worker loop on the running event loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def retry_after(self) -> int:
        """Seconds until the current queue is likely drained (at least 1)."""
        return max(1, math.ceil(self._pending / self._rate)) if self._rate > 0 else 1

    async def submit(self, texts: list[str], prompt_lengths: list[int] | None = None, *, encode: EncodeFn | None = None,
                     prepare: PrepareFn | None = None, costs: Sequence[int] | None = None
                     ) -> tuple[np.ndarray, list[int]]:
        """Encode ``texts`` (in shared groups); returns their vectors and token counts in order.

        ``prompt_lengths[i]`` leading tokens of text ``i`` are left out of a mean pool (default none);
        ``prepare`` instead renders a slice of ``texts`` and gives its prompt lengths, on the worker thread.
        ``encode`` picks the encoder (default: the queue's); ``costs`` are the texts' estimated tokens for the
        group budget (default :func:`estimate_tokens`). Raises :class:`Overloaded` or :class:`ShuttingDown`.
        """
        if self._closed or self._wakeup is None:
            raise ShuttingDown("the server is shutting down")
        if not texts:
            raise ValueError("no texts to encode")
        if self._pending + len(texts) > self.max_queue:
            self.stats.rejected += 1
            raise Overloaded(self.retry_after())
        future = asyncio.get_running_loop().create_future()
        costs = list(costs) if costs is not None else [estimate_tokens(t) for t in texts]
        self._fresh.append(_Job(list(texts), list(prompt_lengths) if prompt_lengths is not None else [0] * len(texts),
                                costs, encode or self._encode, prepare, future, cost=sum(costs)))
        self._queued_texts += len(texts)
        self._pending += len(texts)
        self.stats.requests += 1
        self._wakeup.set()
        return await future

    async def _wait(self, timeout: float | None) -> None:
        assert self._wakeup is not None
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def _run(self) -> None:
        while True:
            self._drop_abandoned()  # requests failed or cancelled while their texts waited
            if not self._fresh and not self._started:
                if self._closed:
                    return
                await self._wait(None)
                continue
            await self._gather()
            parts = self._next_group()
            if parts:
                await self._encode_group(parts)

    async def _gather(self) -> None:
        """Wait up to ``max_wait`` for company while less than a full group is queued."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while self._queued_texts < self.max_batch and not self._closed:
            left = deadline - loop.time()
            if left <= 0:
                return
            await self._wait(left)

    def _drop_abandoned(self) -> None:
        """Forget queued texts of requests whose future is already done (cancelled, or failed in an earlier group)."""
        for line in (self._fresh, self._started):
            for job in [j for j in line if j.future.done()]:
                line.remove(job)
                self._queued_texts -= job.left
                self._pending -= job.left
                job.taken = len(job.texts)

    def _next_group(self) -> list[_Part]:
        """Take the next group's texts: new requests that fit in one group, merged; or a turn of the large ones.

        The two alternate while both wait, so a stream of small requests cannot starve a large one, and a small
        request waits for at most the group being encoded and one group of the large requests."""
        self._drop_abandoned()
        small = [j for j in self._fresh if self._fits(j)]
        large = [*(j for j in self._fresh if not self._fits(j)), *self._started]
        if small and (not large or not self._last_small):
            parts, self._last_small = self._pack(small), True
        elif large:
            parts, self._last_small = self._turn(large), False
        else:
            return []
        self._take(parts)
        return parts

    def _fits(self, job: _Job) -> bool:
        """Whether all of ``job`` fits in one group."""
        return len(job.texts) <= self.max_batch and (self.max_batch_tokens is None or job.cost <= self.max_batch_tokens)

    def _pack(self, jobs: list[_Job]) -> list[_Part]:
        """Whole requests with the first one's encoder, in arrival order, as many as fit in one group."""
        parts: list[_Part] = []
        n = cost = 0
        for job in jobs:
            if job.encode is jobs[0].encode and n + len(job.texts) <= self.max_batch and (
                    self.max_batch_tokens is None or cost + job.cost <= self.max_batch_tokens):
                parts.append(_Part(job, 0, len(job.texts)))
                n, cost = n + len(job.texts), cost + job.cost
        return parts

    def _turn(self, jobs: list[_Job]) -> list[_Part]:
        """The next texts of the first large request in line, then of the others with its encoder, up to the limits
        (a single text over the token budget goes alone)."""
        parts: list[_Part] = []
        n = cost = 0
        budget = self.max_batch_tokens
        for job in jobs:
            if job.encode is not jobs[0].encode:
                continue
            end = job.taken
            while end < len(job.texts) and n < self.max_batch and (
                    n == 0 or budget is None or cost + job.costs[end] <= budget):
                cost += job.costs[end]
                n += 1
                end += 1
            if end > job.taken:
                parts.append(_Part(job, job.taken, end))
            if n >= self.max_batch:
                break
        return parts

    def _take(self, parts: list[_Part]) -> None:
        """Mark ``parts`` as handed to the encoder; their requests with texts left wait their next turn last."""
        for part in parts:
            part.job.taken = part.end
            self._queued_texts -= part.end - part.start
        picked = {id(p.job) for p in parts}
        self._fresh = deque(j for j in self._fresh if id(j) not in picked)
        self._started = deque([*(j for j in self._started if id(j) not in picked),
                               *(p.job for p in parts if p.job.left > 0)])

    async def _encode_group(self, parts: list[_Part]) -> None:
        """Encode one group on the worker thread and hand each request its share."""
        loop = asyncio.get_running_loop()
        size = sum(p.end - p.start for p in parts)
        started = time.perf_counter()
        try:
            ok, failed, vectors, tokens = await loop.run_in_executor(self._executor, _encode_parts, parts[0].job.encode,
                                                                     parts)
        except Exception as exc:  # the encoder failed: every request of the group gets the error
            self._pending -= size
            for part in parts:
                self._fail(part.job, exc)
            return
        self._pending -= size
        for job, exc in failed:
            self._fail(job, exc)
        self._record(sum(p.end - p.start for p in ok), time.perf_counter() - started)
        offset = 0
        for part in ok:
            n = part.end - part.start
            self._deliver(part.job, vectors[offset:offset + n], tokens[offset:offset + n])
            offset += n

    def _fail(self, job: _Job, exc: Exception) -> None:
        if not job.future.done():
            job.future.set_exception(exc)  # its queued texts are dropped by _drop_abandoned

    def _deliver(self, job: _Job, vectors: np.ndarray, tokens: list[int]) -> None:
        if job.future.done():  # a client that went away, or a request that failed in an earlier group
            return
        job.vectors.append(vectors)
        job.tokens += tokens
        if job.encoded == len(job.texts):
            job.future.set_result((job.vectors[0] if len(job.vectors) == 1 else np.concatenate(job.vectors),
                                   job.tokens))
            job.vectors = []

    def _record(self, texts: int, seconds: float) -> None:
        if not texts:
            return
        self.stats.batches += 1
        self.stats.texts += texts
        self.stats.encode_seconds += seconds
        self.stats.largest_batch = max(self.stats.largest_batch, texts)
        if seconds > 0:
            rate = texts / seconds
            self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate

    async def close(self) -> None:
        """Finish every queued request, then stop the worker."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)


#: The former name of :class:`EncodeQueue`.
MicroBatcher = EncodeQueue


def encode_with_usage(encoder: "LGAnnaEncoder", batch_size: int = 32) -> EncodeFn:
    """An ``encode`` function for :class:`EncodeQueue`: vectors of texts as given, and their token counts."""

    def encode(texts: list[str], prompt_lengths: list[int]) -> tuple[np.ndarray, list[int]]:
        """Tokenise once, count, embed."""
        ids, _ = encoder.tokenize(texts)
        extra = {"prompt_lengths": prompt_lengths} if any(prompt_lengths) else {}
        vectors = encoder.encode_ids(ids, batch_size=batch_size, show_progress_bar=False, **extra)
        return vectors, [len(r) for r in ids]

    return encode


# ------------------------------------------------------------------------------------------------ HTTP
class ApiError(Exception):
    """An error answered as OpenAI-style JSON."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """``{"error": {...}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ServerState:
    """What one server holds."""

    encoder: Any
    settings: ServeSettings
    index: "Index | None" = None
    model_name: str = ""
    batcher: EncodeQueue | None = None
    started: float = field(default_factory=time.time)
    in_flight: int = 0


def _check_text(text: str, param: str, where: str) -> None:
    """400 naming ``where`` when ``text`` is not valid Unicode (a lone surrogate, e.g. JSON ``"\\ud800"``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(400, f"'{where}' has a lone surrogate (U+{ord(text[exc.start]):04X}) at character {exc.start}: "
                            f"it is not valid Unicode text", param=param, code="invalid_unicode") from None


def _check_str_list(value: Any, param: str, settings: ServeSettings) -> list[str]:
    """``input``: a string or a non-empty list of strings, within the request's limits."""
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list):
        if not value:
            raise ApiError(400, f"'{param}' must not be an empty list", param=param)
        if all(isinstance(x, int) for x in value) or all(isinstance(x, list) for x in value):
            raise ApiError(400, f"'{param}' as token ids is not supported: send text (a string or a list of strings)",
                           param=param)
        items = value
    else:
        raise ApiError(400, f"'{param}' must be a string or a list of strings, got {type(value).__name__}", param=param)
    if len(items) > settings.max_inputs:
        raise ApiError(413, f"'{param}' has {len(items)} items; at most {settings.max_inputs} per request",
                       param=param, code="too_many_inputs")
    for i, item in enumerate(items):
        where = f"{param}[{i}]" if isinstance(value, list) else param
        if not isinstance(item, str):
            raise ApiError(400, f"'{where}' is {type(item).__name__}, expected a string", param=param)
        if len(item) > settings.max_chars:
            raise ApiError(400, f"'{where}' has {len(item)} characters; at most {settings.max_chars} per input",
                           param=param, code="input_too_long")
        _check_text(item, param, where)
    return items


def _choice(body: dict[str, Any], param: str, choices: Sequence[str], default: str) -> str:
    """``body[param]`` if it is one of ``choices``; ``default`` when absent (or null / empty)."""
    value = body.get(param)
    if value is None or value == "":
        return default
    if not isinstance(value, str) or value not in choices:
        raise ApiError(400, f"'{param}' must be one of {', '.join(map(repr, choices))}, got {json.dumps(value)[:80]}",
                       param=param)
    return value


def _task_of(body: dict[str, Any], settings: ServeSettings) -> "Task | None":
    """The request's ``task`` (a registered name) or ``instruction`` (free text), checked; ``None`` without them."""
    from .prompts import Task, get_task

    task, instruction = body.get("task"), body.get("instruction")
    if task is not None and instruction is not None:
        raise ApiError(400, "give 'task' or 'instruction', not both", param="task")
    if instruction is not None:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ApiError(400, "'instruction' must be a non-empty string", param="instruction")
        if len(instruction) > settings.max_chars:
            raise ApiError(400, f"'instruction' has {len(instruction)} characters; at most {settings.max_chars}",
                           param="instruction", code="input_too_long")
        _check_text(instruction, "instruction", "instruction")
        return Task("custom", instruction, task_type="retrieval")
    if task is not None:
        if not isinstance(task, str) or not task.strip():
            raise ApiError(400, "'task' must be a registered task name (a non-empty string)", param="task")
        try:
            return get_task(task)
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(400, str(exc.args[0] if exc.args else exc), param="task", code="unknown_task") from None
    return None


def _examples_of(body: dict[str, Any], settings: ServeSettings) -> list[tuple[str, str]] | None:
    """The request's few-shot ``examples`` (``[[query, response], ...]``), checked; ``None`` without them."""
    examples = body.get("examples")
    if examples is None:
        return None
    ok = isinstance(examples, list) and all(
        isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e) for e in examples)
    if not ok:
        raise ApiError(400, "'examples' must be a list of [query, response] string pairs", param="examples")
    total = sum(len(x) for e in examples for x in e)
    if total > settings.max_chars:
        raise ApiError(400, f"'examples' have {total} characters in all; at most {settings.max_chars}",
                       param="examples", code="input_too_long")
    for i, e in enumerate(examples):
        for j, x in enumerate(e):
            _check_text(x, "examples", f"examples[{i}][{j}]")
    return [(q, r) for q, r in examples]


@dataclass
class _Prompt:
    """How a request's texts are embedded: as given (``query=False``) or as queries with ``task``/``examples``."""

    query: bool = False
    task: "Task | None" = None
    examples: list[tuple[str, str]] | None = None

    @property
    def extra_chars(self) -> int:
        """Characters the rendering adds to each text, about (for the batch budget)."""
        return (len(self.task.instruction) if self.task is not None else 0) + \
            sum(len(x) for e in self.examples or () for x in e)


def _prompt_of(body: dict[str, Any], settings: ServeSettings, input_type: str) -> _Prompt:
    """The request's :class:`_Prompt`; a task or examples without ``input_type: query`` are refused."""
    task, examples = _task_of(body, settings), _examples_of(body, settings)
    if input_type == "document":
        if task is not None or examples is not None:
            raise ApiError(400, "'task', 'instruction' and 'examples' apply to input_type 'query'", param="input_type")
        return _Prompt()
    return _Prompt(True, task, examples)


def query_renderer(encoder: "LGAnnaEncoder", task: "Task | None" = None,
                   examples: Sequence[Sequence[str]] | None = None) -> PrepareFn:
    """A ``prepare`` function for :class:`EncodeQueue`: queries rendered exactly as ``encode_queries`` renders them
    (task instruction and examples), with their prompt lengths for a model that leaves the prompt out of its mean."""

    def prepare(texts: list[str]) -> tuple[list[str], list[int]]:
        """Render, and measure each prompt."""
        rendered = encoder.render_queries(texts, task, examples)
        if not getattr(encoder, "excludes_prompt", False) or rendered == texts:
            return rendered, [0] * len(texts)
        from .prompts import query_prefix

        return rendered, [encoder.prompt_length(query_prefix(r, t)) for r, t in zip(rendered, texts)]

    return prepare


def describe_adapter(index: "Index | None") -> dict[str, Any] | None:
    """The adapter the served collection's search queries are embedded with: ``{"name", "dir", ...}``, or ``None``
    (no collection, no adapter, or an index opened with a given encoder, which ignores it).

    Read from the index on each call, so an adapter made or removed while serving shows; the first call for a
    new adapter loads its query encoder."""
    if index is None or index.adapter is None:
        return None
    folder = index.adapter
    record = dict((index.metadata or {}).get("adapter") or {})
    if index.query_encoder is index.encoder:  # an index with a given encoder embeds queries with it
        return None
    info = {"name": record.get("dir", folder.name), "dir": str(folder)}
    for key in ("base_model", "created", "side", "steps", "dev_mrr10_base", "dev_mrr10_adapted"):
        if key in record:
            info[key] = record[key]
    return info


def adapter_note(index: "Index | None") -> str:
    """A few words for the server's start line: which adapter search queries use ("" without a collection)."""
    if index is None:
        return ""
    info = describe_adapter(index)
    if info is None:
        return "queries with the base model (no adapter)"
    return f"queries with adapter {info['name']} ({info['dir']})"


def _json_bytes(content: Any) -> bytes:
    """Compact JSON; text that is not valid Unicode (a lone surrogate echoed back) is escaped instead of failing."""
    try:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    """A Starlette response holding ``content`` as JSON."""
    from starlette.responses import Response

    return Response(_json_bytes(content), status_code=status, headers=headers, media_type="application/json")


def _embedding_data(vectors: np.ndarray, fmt: str) -> list[dict[str, Any]]:
    """OpenAI's ``data`` list: float lists or base64 of little-endian float32."""
    data = []
    for i, vector in enumerate(vectors):
        v = np.ascontiguousarray(vector, dtype="<f4")
        emb: Any = base64.b64encode(v.tobytes()).decode("ascii") if fmt == "base64" else v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return data


#: Bodies and responses above this many bytes / texts are parsed and rendered off the event loop.
_BIG_BODY = 1 << 20
_BIG_RESPONSE = 256


class Handlers:
    """The server's endpoints over one :class:`ServerState`: one method per route, plus auth, body reading, model
    checks, encoding through the :class:`EncodeQueue` and access to the index (on one thread of its own)."""

    def __init__(self, state: ServerState) -> None:
        """Handlers of ``state``; the queue starts with the app (:meth:`lifespan`)."""
        self.state = state
        self.settings = state.settings
        self._encode_fns: dict[int, tuple[Any, EncodeFn]] = {}
        self._index_thread = ThreadPoolExecutor(1, thread_name_prefix="lganna-index")
        self._adapter_seen: dict[str, Any] | None = None

    # -------------------------------------------------------------- plumbing
    def routes(self) -> list[Any]:
        """Starlette routes of the four endpoints."""
        from starlette.routing import Route

        return [Route("/v1/embeddings", self._endpoint(self.embeddings), methods=["POST"]),
                Route("/v1/models", self._endpoint(self.models), methods=["GET"]),
                Route("/health", self._endpoint(self.health, auth=False), methods=["GET"]),
                Route("/v1/search", self._endpoint(self.search), methods=["POST"])]

    def _endpoint(self, handler: Callable[[Any], Any], *, auth: bool = True) -> Callable[[Any], Any]:
        """``handler`` answering JSON: its dict, or an :class:`ApiError` (never a bare 500 page)."""

        async def run(request: Any) -> Any:
            """Authorize, handle, answer JSON."""
            self.state.in_flight += 1
            try:
                if auth:
                    self.authorize(request)
                content = await handler(request)
                if isinstance(content, dict) and len(content.get("data") or ()) > _BIG_RESPONSE:
                    body = await asyncio.get_running_loop().run_in_executor(None, _json_bytes, content)
                    from starlette.responses import Response

                    return Response(body, media_type="application/json")
                return _json_response(content)
            except ApiError as exc:
                return self.error(exc)
            except Exception as exc:  # OpenAI clients parse the JSON error
                return self.error(self.unexpected(exc))
            finally:
                self.state.in_flight -= 1

        return run

    @staticmethod
    def error(exc: ApiError) -> Any:
        """The JSON response of ``exc``."""
        return _json_response(exc.body(), exc.status, exc.headers)

    def unexpected(self, exc: Exception) -> ApiError:
        """An :class:`ApiError` for an exception no check foresaw: a client that left is a 400, a collection that
        is gone a 404, a store that cannot be read now a 503, the rest a 500."""
        from starlette.requests import ClientDisconnect

        if isinstance(exc, ClientDisconnect):
            return ApiError(400, "the client disconnected before sending the whole body", code="client_disconnected")
        if self.state.index is not None:
            from .index import CollectionNotFoundError, IndexStoreError

            if isinstance(exc, CollectionNotFoundError):
                return ApiError(404, str(exc), code="collection_not_found")
            if isinstance(exc, IndexStoreError):
                logger.error("the collection cannot be read: %s", exc)
                return ApiError(503, f"the collection cannot be read now: {exc}", type="server_error",
                                code="store_unavailable", headers={"Retry-After": "1"})
        logger.exception("request failed")
        return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")

    async def http_error(self, request: Any, exc: Any) -> Any:
        """Starlette's own errors (unknown path 404, wrong method 405) in the OpenAI shape."""
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", "") or "error"
        path = request.url.path
        message = (f"no route {path}: this server answers POST /v1/embeddings, POST /v1/search, GET /v1/models, "
                   f"GET /health" if status == 404 else f"{request.method} {path}: {detail}")
        return self.error(ApiError(status, message, code="not_found" if status == 404 else "method_not_allowed",
                                   headers=dict(getattr(exc, "headers", None) or {})))

    def authorize(self, request: Any) -> None:
        """401 unless the request carries the server's bearer token (when one is set)."""
        if self.settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.settings.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           type="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def read_json(self, request: Any) -> dict[str, Any]:
        """The request's JSON object body, within ``max_body_bytes`` (413) and valid (400)."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body is {int(declared)} bytes; at most {limit}", code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body exceeds {limit} bytes", code="request_too_large")
            chunks.append(chunk)
        raw = b"".join(chunks) or b"null"
        try:
            body = json.loads(raw) if size < _BIG_BODY else \
                await asyncio.get_running_loop().run_in_executor(None, json.loads, raw)
        except RecursionError:
            raise ApiError(400, "request body is not valid JSON: nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer past Python's digit limit
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    def check_model(self, body: dict[str, Any]) -> None:
        """404 when the request names another model."""
        model = body.get("model")
        if model is not None and model != self.state.model_name:
            shown = repr(model) if isinstance(model, str) else json.dumps(model)[:80]
            raise ApiError(404, f"model {shown} is not served here; this server serves {self.state.model_name!r} "
                           f"(GET /v1/models)", param="model", code="model_not_found")

    def _encode_fn(self, encoder: Any) -> EncodeFn:
        """The queue's ``encode`` function of ``encoder`` (one per encoder, so its requests share groups)."""
        key = id(encoder)
        if key not in self._encode_fns or self._encode_fns[key][0] is not encoder:
            base = id(self.state.encoder)
            self._encode_fns = {k: v for k, v in self._encode_fns.items() if k == base}  # an old query encoder goes
            self._encode_fns[key] = (encoder, encode_with_usage(encoder, self.settings.batch_size))
        return self._encode_fns[key][1]

    async def encode(self, encoder: Any, texts: list[str], prompt: _Prompt) -> tuple[np.ndarray, list[int]]:
        """Vectors and token counts of ``texts`` by ``encoder`` through the queue (429 when full, 503 when stopping)."""
        queue = self.state.batcher
        if queue is None:
            raise ApiError(503, "the server is not started", type="server_error", code="shutting_down",
                           headers={"Retry-After": "1"})
        max_length = getattr(getattr(encoder, "config", None), "max_length", None)
        extra = prompt.extra_chars // 4
        costs = [estimate_tokens(t, max_length) + (min(extra, max_length) if max_length else extra) for t in texts]
        prepare = query_renderer(encoder, prompt.task, prompt.examples) if prompt.query else None
        try:
            return await queue.submit(texts, encode=self._encode_fn(encoder), prepare=prepare, costs=costs)
        except Overloaded as exc:
            raise ApiError(429, f"{exc}: {queue.pending} texts are queued (limit {self.settings.max_queue})",
                           type="rate_limit_error", code="overloaded",
                           headers={"Retry-After": str(exc.retry_after)}) from None
        except ShuttingDown:
            raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down",
                           headers={"Retry-After": "1"}) from None

    async def on_index(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (an index access) on the index's own thread: one at a time, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._index_thread, fn)

    async def adapter(self) -> dict[str, Any] | None:
        """:func:`describe_adapter` of the served index, read now; while the index thread is busy for more than a
        second (a search, or loading a new adapter), the last description read."""
        index = self.state.index
        if index is None:
            return None
        read = asyncio.ensure_future(self.on_index(lambda: describe_adapter(index)))
        read.add_done_callback(lambda f: f.cancelled() or f.exception())  # a late failure is not "never retrieved"
        try:
            self._adapter_seen = await asyncio.wait_for(asyncio.shield(read), 1.0)
        except asyncio.TimeoutError:
            pass
        except Exception as exc:  # a damaged adapter: searches report it
            logger.error("reading the collection's adapter failed: %s", exc)
            self._adapter_seen = None
        return self._adapter_seen

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> Any:
        """Start the queue (and load the collection's query encoder) with the app; drain and stop them at exit."""
        queue = EncodeQueue(encode_with_usage(self.state.encoder, self.settings.batch_size),
                            max_batch=self.settings.max_batch, max_wait_ms=self.settings.max_wait_ms,
                            max_queue=self.settings.max_queue, max_batch_tokens=self.settings.max_batch_tokens)
        queue.start()
        self.state.batcher = queue
        if self.state.index is not None:
            await self.adapter()  # loads an adapted query encoder now, not in the first search
        try:
            yield
        finally:
            await queue.close()
            self._index_thread.shutdown(wait=False)

    # -------------------------------------------------------------- endpoints
    async def embeddings(self, request: Any) -> dict[str, Any]:
        """POST /v1/embeddings: OpenAI's request and response (see the module docstring)."""
        body = await self.read_json(request)
        self.check_model(body)
        if "input" not in body:
            raise ApiError(400, "'input' is required", param="input")
        texts = _check_str_list(body["input"], "input", self.settings)
        fmt = _choice(body, "encoding_format", ("float", "base64"), "float")
        dims = body.get("dimensions")
        encoder = self.state.encoder
        if dims is not None and (isinstance(dims, bool) or dims != encoder.dimension):
            raise ApiError(400, f"'dimensions' must be {encoder.dimension} (this model does not shorten vectors)",
                           param="dimensions")
        input_type = _choice(body, "input_type", ("query", "document"), "document")
        vectors, tokens = await self.encode(encoder, texts, _prompt_of(body, self.settings, input_type))
        if len(texts) > _BIG_RESPONSE:
            data = await asyncio.get_running_loop().run_in_executor(None, _embedding_data, vectors, fmt)
        else:
            data = _embedding_data(vectors, fmt)
        n = int(sum(tokens))
        return {"object": "list", "data": data, "model": self.state.model_name,
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    async def models(self, request: Any) -> dict[str, Any]:
        """GET /v1/models: the one served model (``adapter``: the one /v1/search queries use, or null)."""
        encoder = self.state.encoder
        return {"object": "list", "data": [{
            "id": self.state.model_name, "object": "model", "created": int(self.state.started),
            "owned_by": "lganna-rag", "dimension": encoder.dimension, "max_length": encoder.config.max_length,
            "precision": getattr(encoder, "precision", "fp32"), "adapter": await self.adapter(),
        }]}

    async def health(self, request: Any) -> dict[str, Any]:
        """GET /health: status, model, collection and its adapter, queue and batching counters (no key needed)."""
        state, queue = self.state, self.state.batcher
        return {"status": "ok" if queue is not None and not queue.closed else "stopping",
                "model": state.model_name, "dimension": state.encoder.dimension,
                "precision": getattr(state.encoder, "precision", "fp32"),
                "collection": state.index.collection if state.index is not None else None,
                "adapter": await self.adapter(),
                "queue": {"pending": queue.pending if queue else 0, "limit": self.settings.max_queue},
                "stats": queue.stats.to_dict() if queue else {}, "uptime_s": round(time.time() - state.started, 1)}

    async def search(self, request: Any) -> dict[str, Any]:
        """POST /v1/search: the ``k`` best chunks of the served collection, as :meth:`Index.search` finds them."""
        index = self.state.index
        if index is None:
            raise ApiError(404, "this server holds no collection: start it with --collection NAME", code="no_index")
        body = await self.read_json(request)
        q = _search_request(body, self.settings, index.collection)
        encoder = await self.on_index(lambda: index.query_encoder) if q.mode != "sparse" else None
        for _ in range(2):
            hits, current = await self._search_with(index, encoder, q)
            if current is encoder:
                break
            encoder = current  # the search re-read the metadata and found another adapter: embed the query again
        return {"object": "list", "collection": index.collection, "model": self.state.model_name, "mode": q.mode,
                "data": [h.to_dict() for h in hits]}

    async def _search_with(self, index: "Index", encoder: Any, q: "_SearchRequest") -> tuple[list[Any], Any]:
        """Hits of ``q`` with its query embedded by ``encoder`` (None: sparse), and the index's query encoder
        after the search (which re-reads the metadata another process may have changed)."""
        vector = None
        if encoder is not None:
            vectors, _ = await self.encode(encoder, [q.query], q.prompt)
            vector = vectors[0]
        text = q.query if q.mode != "dense" else None

        def run() -> tuple[list[Any], Any]:
            """On the index thread: search, then read the query encoder again."""
            hits = index.search_by_vector(vector, q.k, where=q.where, text=text)
            return hits, index.query_encoder if encoder is not None else None

        try:
            return await self.on_index(run)
        except ValueError as exc:
            if not q.where:
                raise
            raise ApiError(400, str(exc), param="filter") from None  # e.g. a key no chunk has


@dataclass
class _SearchRequest:
    """A checked /v1/search body."""

    query: str
    k: int
    mode: str
    where: dict[str, Any] | None
    prompt: _Prompt


def _search_request(body: dict[str, Any], settings: ServeSettings, collection: str) -> _SearchRequest:
    """Check a /v1/search body (400 naming the field; 404 for another collection)."""
    from .filters import check_where
    from .index import MODES

    asked = body.get("collection")
    if asked is not None and asked != collection:
        shown = repr(asked) if isinstance(asked, str) else json.dumps(asked)[:80]
        raise ApiError(404, f"collection {shown} is not served here; this server serves {collection!r}",
                       param="collection", code="collection_not_found")
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ApiError(400, "'query' must be a non-empty string", param="query")
    if len(query) > settings.max_chars:
        raise ApiError(400, f"'query' has {len(query)} characters; at most {settings.max_chars}", param="query",
                       code="input_too_long")
    _check_text(query, "query", "query")
    k = body.get("k")
    k = 5 if k is None else k
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= settings.max_k:
        raise ApiError(400, f"'k' must be an integer from 1 to {settings.max_k}", param="k")
    mode = _choice(body, "mode", MODES, "hybrid")  # the default of Index.search and `lganna-rag search`
    try:
        where = check_where(body.get("filter"))
    except ValueError as exc:
        raise ApiError(400, str(exc), param="filter", code="invalid_filter") from None
    return _SearchRequest(query, k, mode, where, _prompt_of(body, settings, "query"))


def build_app(encoder: Any, *, index: "Index | None" = None, settings: ServeSettings | None = None,
              model_name: str | None = None) -> Any:
    """The Starlette app serving ``encoder`` (and ``index`` for /v1/search); ``app.state.lganna`` is its
    :class:`ServerState`."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException

    state = ServerState(encoder, settings or ServeSettings(), index, model_name or encoder.name)
    handlers = Handlers(state)
    app = Starlette(routes=handlers.routes(), lifespan=handlers.lifespan,
                    exception_handlers={HTTPException: handlers.http_error})
    app.state.lganna = state
    app.state.handlers = handlers
    return app


def make_server(app: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, shutdown_timeout: float = 30.0,
                log_level: str = "warning") -> Any:
    """A ``uvicorn.Server`` for ``app``: SIGINT/SIGTERM stop accepting, finish in-flight requests (up to
    ``shutdown_timeout`` s), then drain the batcher and exit."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown (the process then dies by the signal,
        skipping the caller's cleanup); here a graceful stop returns from ``run()`` so the caller closes
        its index and exits 0."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:
                    self._captured_signals.clear()

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=shutdown_timeout,
                            lifespan="on", access_log=False, limit_concurrency=None)
    return Server(config)


@contextlib.contextmanager
def background(app: Any, host: str = DEFAULT_HOST, port: int = 0, *, shutdown_timeout: float = 30.0,
               start_timeout: float = 60.0) -> Iterator[str]:
    """Run ``app`` on a thread (``port=0``: a free port); yields the base URL, stops gracefully on exit."""
    import socket
    import threading

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    server = make_server(app, host, bound, shutdown_timeout=shutdown_timeout)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="lganna-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the server did not start on {host}:{bound}")
        time.sleep(0.01)
    try:
        yield f"http://{host if ':' not in host else f'[{host}]'}:{bound}"
    finally:
        server.should_exit = True
        thread.join(shutdown_timeout + 10)
        sock.close()


def serve(encoder: Any, *, index: "Index | None" = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          settings: ServeSettings | None = None, shutdown_timeout: float = 30.0, log_level: str = "info") -> BatcherStats:
    """Run the server in the foreground until SIGINT/SIGTERM (graceful: in-flight requests finish); returns its counters."""
    app = build_app(encoder, index=index, settings=settings)
    make_server(app, host, port, shutdown_timeout=shutdown_timeout, log_level=log_level).run()
    batcher = app.state.lganna.batcher
    return batcher.stats if batcher is not None else BatcherStats()


def search_remote(url: str, query: str, *, k: int = 5, mode: str = "hybrid", where: dict[str, Any] | None = None,
                  task: str | None = None, instruction: str | None = None,
                  examples: Sequence[Sequence[str]] | None = None, collection: str | None = None,
                  api_key: str | None = None, timeout: float = 30.0) -> list[dict[str, Any]]:
    """``POST {url}/v1/search`` on a running ``lganna-rag serve``; returns the hits (dicts). Stdlib only."""
    import json
    import urllib.error
    import urllib.request

    body: dict[str, Any] = {"query": query, "k": k, "mode": mode}
    for key, value in (("filter", where), ("task", task), ("instruction", instruction), ("collection", collection)):
        if value is not None:
            body[key] = value
    if examples is not None:
        body["examples"] = [list(e) for e in examples]
    headers = {"Content-Type": "application/json"}
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url.rstrip("/") + "/v1/search", data=json.dumps(body).encode(), headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())["data"]
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except Exception:  # not our JSON error
            message = exc.reason
        raise RemoteError(exc.code, f"{url}: HTTP {exc.code}: {message}") from None
    except urllib.error.URLError as exc:
        raise RemoteError(None, f"cannot reach the server at {url}: {exc.reason} (start it with: lganna-rag serve)") from None


class RemoteError(RuntimeError):
    """A ``lganna-rag serve`` request failed; ``status`` is the HTTP status (None: not reachable)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
