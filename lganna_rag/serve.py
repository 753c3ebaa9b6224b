"""``lganna-rag serve``: an OpenAI-compatible embeddings server (and search over one collection) on Starlette + uvicorn.

One process holds one loaded encoder (and optionally one :class:`~lganna_rag.index.Index`), so each
request pays only for its forward pass, not for importing torch and loading the model.

Endpoints (JSON; errors are OpenAI-style ``{"error": {"message", "type", "param", "code"}}``):

- ``POST /v1/embeddings``: OpenAI's request (``input``: a string or a list of strings, ``model``,
  ``encoding_format``: ``float`` or ``base64``) and response (``data[i].embedding``, ``usage``). Extension:
  ``input_type`` (``"document"``, the default, embeds text as given; ``"query"`` adds the task
  instruction as ``encode_queries`` does), ``task`` (a registered task name) or ``instruction`` (free text),
  ``examples`` (few-shot ``[query, response]`` pairs).
- ``GET /v1/models``, ``GET /health`` (no key needed), ``POST /v1/search`` (``query``, ``k``, ``mode``:
  ``hybrid`` (default), ``dense`` or ``sparse``, ``filter``, ``task``/``instruction``/``examples``) over the
  served collection; hits carry ``id``, ``score``, ``source``, ``chunk``, ``start``/``end`` (the span) and ``text``.

Concurrent requests are merged by :class:`MicroBatcher` into shared forward passes on one worker
thread. Its queue is bounded (in texts): above the bound a request gets 429 with ``Retry-After``.
Starlette + uvicorn were chosen over FastAPI because the server is five routes with hand-written
OpenAI-shaped validation errors: FastAPI's value (pydantic models, OpenAPI pages) would bring its own
422 error shape that OpenAI clients do not expect, and one more dependency.

Starlette and uvicorn are imported only when a server is built (``pip install 'lganna-rag[serve]'``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
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

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8088
API_KEY_ENV = "LGANNA_API_KEY"


@dataclass
class ServeSettings:
    """Limits and batching knobs of a server."""

    #: Most texts one forward pass group takes (a single larger request is still encoded in one group).
    max_batch: int = 64
    #: How long an idle batcher waits for more requests once one arrived (milliseconds). 0: start at once;
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

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_inputs", "max_chars", "max_body_bytes", "batch_size", "max_k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        if self.max_inputs > self.max_queue:
            raise ValueError(f"max_inputs ({self.max_inputs}) must not exceed max_queue ({self.max_queue}): "
                             f"a full request could never be queued")


class Overloaded(Exception):
    """The batcher's queue is full; ``retry_after`` is a whole number of seconds to wait."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy; retry after {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The batcher no longer accepts work."""


@dataclass
class _Job:
    texts: list[str]
    prompt_lengths: list[int]
    future: asyncio.Future


@dataclass
class BatcherStats:
    """Counters since start."""

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


class MicroBatcher:
    """Merges concurrent encode requests into shared calls of ``encode`` on one worker thread.

    ``encode(texts, prompt_lengths) -> (vectors, token_counts)``. A request waits at most ``max_wait_ms`` for company
    when the worker is idle; while the worker is busy, requests queue up and go together into the
    next call (at most ``max_batch`` texts, whole requests only). At most ``max_queue`` texts may be
    queued or in flight; :meth:`submit` raises :class:`Overloaded` beyond that.
    """

    def __init__(self, encode: Callable[[list[str], list[int]], tuple[np.ndarray, list[int]]], *, max_batch: int = 64,
                 max_wait_ms: float = 0.0, max_queue: int = 4096) -> None:
        """Create an idle batcher; call :meth:`start` inside the running event loop."""
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._queue: deque[_Job] = deque()
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
        """Start the batching loop on the running event loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def retry_after(self) -> int:
        """Seconds until the current queue is likely drained (at least 1)."""
        return max(1, math.ceil(self._pending / self._rate)) if self._rate > 0 else 1

    async def submit(self, texts: list[str], prompt_lengths: list[int] | None = None) -> tuple[np.ndarray, list[int]]:
        """Encode ``texts`` in a shared batch; raises :class:`Overloaded` or :class:`ShuttingDown`.

        ``prompt_lengths[i]`` leading tokens of text ``i`` are left out of a mean pool (queries of models
        that exclude the instruction from the pooled mean); default none.
        """
        if self._closed or self._wakeup is None:
            raise ShuttingDown("the server is shutting down")
        if self._pending + len(texts) > self.max_queue:
            self.stats.rejected += 1
            raise Overloaded(self.retry_after())
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(texts, list(prompt_lengths) if prompt_lengths is not None else [0] * len(texts), future))
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
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closed:
                    return
                await self._wait(None)
                continue
            deadline = loop.time() + self.max_wait
            while self._queued_texts < self.max_batch and not self._closed:
                left = deadline - loop.time()
                if left <= 0:
                    break
                await self._wait(left)
            jobs, texts, lengths = [], [], []
            while self._queue and (not jobs or len(texts) + len(self._queue[0].texts) <= self.max_batch):
                job = self._queue.popleft()
                jobs.append(job)
                texts += job.texts
                lengths += job.prompt_lengths
            self._queued_texts -= len(texts)
            started = time.perf_counter()
            try:
                vectors, tokens = await loop.run_in_executor(self._executor, self._encode, texts, lengths)
            except Exception as exc:  # the encoder failed: every request of the batch gets the error
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self._pending -= len(texts)
            seconds = time.perf_counter() - started
            self.stats.batches += 1
            self.stats.texts += len(texts)
            self.stats.encode_seconds += seconds
            self.stats.largest_batch = max(self.stats.largest_batch, len(texts))
            if seconds > 0:
                rate = len(texts) / seconds
                self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate
            start = 0
            for job in jobs:
                end = start + len(job.texts)
                if not job.future.done():  # a client that went away leaves a cancelled future
                    job.future.set_result((vectors[start:end], tokens[start:end]))
                start = end

    async def close(self) -> None:
        """Finish every queued request, then stop the worker."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)


def encode_with_usage(encoder: "LGAnnaEncoder", batch_size: int = 32
                      ) -> Callable[[list[str], list[int]], tuple[np.ndarray, list[int]]]:
    """An ``encode`` function for :class:`MicroBatcher`: vectors of texts as given, and their token counts."""

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
    batcher: MicroBatcher | None = None
    started: float = field(default_factory=time.time)
    in_flight: int = 0


def _check_str_list(value: Any, param: str, settings: ServeSettings) -> list[str]:
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
        if not isinstance(item, str):
            raise ApiError(400, f"'{param}[{i}]' is {type(item).__name__}, expected a string", param=param)
        if len(item) > settings.max_chars:
            raise ApiError(400, f"'{param}[{i}]' has {len(item)} characters; at most {settings.max_chars} per input",
                           param=param, code="input_too_long")
    return items


def _task_of(body: dict[str, Any]) -> Any:
    from .prompts import Task, get_task

    task, instruction = body.get("task"), body.get("instruction")
    if task is not None and instruction is not None:
        raise ApiError(400, "give 'task' or 'instruction', not both", param="task")
    if instruction is not None:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ApiError(400, "'instruction' must be a non-empty string", param="instruction")
        return Task("custom", instruction, task_type="retrieval")
    if task is not None:
        if not isinstance(task, str):
            raise ApiError(400, "'task' must be a string (a registered task name)", param="task")
        try:
            return get_task(task)
        except KeyError as exc:
            raise ApiError(400, str(exc.args[0] if exc.args else exc), param="task", code="unknown_task") from None
    return None


def _examples_of(body: dict[str, Any]) -> list[tuple[str, str]] | None:
    examples = body.get("examples")
    if examples is None:
        return None
    ok = isinstance(examples, list) and all(
        isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e) for e in examples)
    if not ok:
        raise ApiError(400, "'examples' must be a list of [query, response] string pairs", param="examples")
    return [(q, r) for q, r in examples]


def _render(state: ServerState, texts: list[str], body: dict[str, Any], input_type: str) -> tuple[list[str], list[int]]:
    """Texts as the model sees them and their prompt lengths: queries get the task instruction, exactly as
    ``encode_queries`` renders them (and, for a model that leaves the prompt out of its mean, its length)."""
    task, examples = _task_of(body), _examples_of(body)
    if input_type == "document":
        if task is not None or examples is not None:
            raise ApiError(400, "'task', 'instruction' and 'examples' apply to input_type 'query'", param="input_type")
        return texts, [0] * len(texts)
    encoder = state.encoder
    rendered = encoder.render_queries(texts, task, examples)
    if not getattr(encoder, "excludes_prompt", False) or rendered == texts:
        return rendered, [0] * len(texts)
    from .prompts import query_prefix

    return rendered, [encoder.prompt_length(query_prefix(r, t)) for r, t in zip(rendered, texts)]


def build_app(encoder: Any, *, index: "Index | None" = None, settings: ServeSettings | None = None,
              model_name: str | None = None) -> Any:
    """The Starlette app serving ``encoder`` (and ``index`` for /v1/search)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    settings = settings or ServeSettings()
    state = ServerState(encoder, settings, index, model_name or encoder.name)
    index_lock = asyncio.Lock()

    def error(exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           type="authentication_error", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    async def read_json(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise ApiError(413, f"request body is {int(declared)} bytes; at most {settings.max_body_bytes}",
                           code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                raise ApiError(413, f"request body exceeds {settings.max_body_bytes} bytes", code="request_too_large")
            chunks.append(chunk)
        import json

        try:
            body = json.loads(b"".join(chunks) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    def check_model(body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is not None and model != state.model_name:
            raise ApiError(404, f"model {model!r} is not served here; this server serves {state.model_name!r} "
                           f"(GET /v1/models)", param="model", code="model_not_found")

    async def encode(rendered: tuple[list[str], list[int]]) -> tuple[np.ndarray, list[int]]:
        assert state.batcher is not None
        try:
            return await state.batcher.submit(*rendered)
        except Overloaded as exc:
            raise ApiError(429, f"{exc}: {state.batcher.pending} texts are queued (limit {settings.max_queue})",
                           type="rate_limit_error", code="overloaded",
                           headers={"Retry-After": str(exc.retry_after)}) from None
        except ShuttingDown:
            raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down",
                           headers={"Retry-After": "1"}) from None

    def endpoint(handler: Callable[[Request], Any], *, auth: bool = True) -> Callable[[Request], Any]:
        async def run(request: Request) -> JSONResponse:
            state.in_flight += 1
            try:
                if auth:
                    authorize(request)
                return JSONResponse(await handler(request))
            except ApiError as exc:
                return error(exc)
            except Exception as exc:  # never a bare 500 page: OpenAI clients parse the JSON error
                logger.exception("request failed")
                return error(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))
            finally:
                state.in_flight -= 1

        return run

    async def embeddings(request: Request) -> dict[str, Any]:
        body = await read_json(request)
        check_model(body)
        if "input" not in body:
            raise ApiError(400, "'input' is required", param="input")
        texts = _check_str_list(body["input"], "input", settings)
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise ApiError(400, f"'encoding_format' must be 'float' or 'base64', got {fmt!r}", param="encoding_format")
        dims = body.get("dimensions")
        if dims is not None and dims != state.encoder.dimension:
            raise ApiError(400, f"'dimensions' must be {state.encoder.dimension} (this model does not shorten vectors)",
                           param="dimensions")
        input_type = body.get("input_type") or "document"
        if input_type not in ("query", "document"):
            raise ApiError(400, f"'input_type' must be 'query' or 'document', got {input_type!r}", param="input_type")
        vectors, tokens = await encode(_render(state, texts, body, input_type))
        data = []
        for i, vector in enumerate(vectors):
            v = np.ascontiguousarray(vector, dtype="<f4")
            emb: Any = base64.b64encode(v.tobytes()).decode("ascii") if fmt == "base64" else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = int(sum(tokens))
        return {"object": "list", "data": data, "model": state.model_name,
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    async def models(request: Request) -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": state.model_name, "object": "model", "created": int(state.started), "owned_by": "lganna-rag",
            "dimension": state.encoder.dimension, "max_length": state.encoder.config.max_length,
            "precision": getattr(state.encoder, "precision", "fp32"),
        }]}

    async def health(request: Request) -> dict[str, Any]:
        batcher = state.batcher
        return {"status": "ok" if batcher is not None and not batcher.closed else "stopping",
                "model": state.model_name, "dimension": state.encoder.dimension,
                "precision": getattr(state.encoder, "precision", "fp32"),
                "collection": state.index.collection if state.index is not None else None,
                "queue": {"pending": batcher.pending if batcher else 0, "limit": settings.max_queue},
                "stats": batcher.stats.to_dict() if batcher else {}, "uptime_s": round(time.time() - state.started, 1)}

    async def search(request: Request) -> dict[str, Any]:
        from .index import MODES

        if state.index is None:
            raise ApiError(404, "this server holds no collection: start it with --collection NAME", code="no_index")
        body = await read_json(request)
        collection = body.get("collection")
        if collection is not None and collection != state.index.collection:
            raise ApiError(404, f"collection {collection!r} is not served here; this server serves "
                           f"{state.index.collection!r}", param="collection", code="collection_not_found")
        query = body.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ApiError(400, "'query' must be a non-empty string", param="query")
        if len(query) > settings.max_chars:
            raise ApiError(400, f"'query' has {len(query)} characters; at most {settings.max_chars}", param="query",
                           code="input_too_long")
        k = body.get("k", 5)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= settings.max_k:
            raise ApiError(400, f"'k' must be an integer from 1 to {settings.max_k}", param="k")
        mode = body.get("mode") or "hybrid"  # as Index.search and `lganna-rag search`
        if mode not in MODES:
            raise ApiError(400, f"'mode' must be one of {list(MODES)}, got {mode!r}", param="mode")
        where = body.get("filter")
        if where is not None and not (isinstance(where, dict) and all(isinstance(key, str) for key in where)):
            raise ApiError(400, "'filter' must be an object of payload field -> value (or list of values)",
                           param="filter")
        vector = None
        if mode != "sparse":
            vectors, _ = await encode(_render(state, [query], body, "query"))
            vector = vectors[0]
        async with index_lock:  # one store access at a time; qdrant-edge is used from one thread
            try:
                hits = await asyncio.get_running_loop().run_in_executor(None, lambda: state.index.search_by_vector(
                    vector, k, where=where or None, text=query if mode != "dense" else None))
            except ValueError as exc:
                raise ApiError(400, str(exc), param="filter") from None
        return {"object": "list", "collection": state.index.collection, "model": state.model_name, "mode": mode,
                "data": [h.to_dict() for h in hits]}

    async def lifespan(app: Any) -> Any:
        batcher = MicroBatcher(encode_with_usage(encoder, settings.batch_size), max_batch=settings.max_batch,
                               max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue)
        batcher.start()
        state.batcher = batcher
        try:
            yield
        finally:
            await batcher.close()

    from contextlib import asynccontextmanager

    app = Starlette(routes=[
        Route("/v1/embeddings", endpoint(embeddings), methods=["POST"]),
        Route("/v1/models", endpoint(models), methods=["GET"]),
        Route("/health", endpoint(health, auth=False), methods=["GET"]),
        Route("/v1/search", endpoint(search), methods=["POST"]),
    ], lifespan=asynccontextmanager(lifespan))
    app.state.lganna = state
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
