"""`lganna-rag serve`: real servers on 127.0.0.1 (a thread, or a subprocess for shutdown), real clients."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from lganna_rag.serve import ServeSettings, background, build_app, search_remote  # noqa: E402

pytestmark = pytest.mark.slow
TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "Bananas are rich in potassium.",
         "A man is playing a guitar on stage."]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def minilm_url(minilm):
    with background(build_app(minilm)) as url:
        yield url


def test_openai_client_gets_the_in_process_vectors(minilm, minilm_url, sts_sentences):
    from openai import OpenAI

    client = OpenAI(base_url=minilm_url + "/v1", api_key="unused", max_retries=0)
    texts = sts_sentences[:40]
    got = client.embeddings.create(input=texts, model="minilm")  # the client asks for base64 by default
    assert [d.index for d in got.data] == list(range(40)) and got.model == "minilm"
    assert np.min(_cos(np.array([d.embedding for d in got.data]), minilm.encode(texts))) >= 0.9999
    assert got.usage.prompt_tokens == sum(len(ids) for ids in minilm.tokenize(texts)[0]) > 40

    single = client.embeddings.create(input=TEXTS[1], model="minilm", encoding_format="float")
    assert len(single.data) == 1 and _cos(np.array(single.data[0].embedding), minilm.encode(TEXTS[1]))[0] >= 0.9999
    models = client.models.list()
    assert [m.id for m in models.data] == ["minilm"] and models.data[0].model_extra["precision"] == minilm.precision


def test_langchain_openai_embeddings_get_the_in_process_vectors(minilm, minilm_url):
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(model="minilm", base_url=minilm_url + "/v1", api_key="unused",
                           check_embedding_ctx_length=False, max_retries=0)
    docs = np.array(emb.embed_documents(TEXTS))
    query = np.array(emb.embed_query("capital of France?"))
    assert np.min(_cos(docs, minilm.encode_documents(TEXTS))) >= 0.9999
    assert _cos(query, minilm.encode_queries("capital of France?"))[0] >= 0.9999


def test_query_input_type_renders_the_task_instruction(mistral):
    """A model with a prompt template: input_type=query with a task equals encode_queries; documents stay plain."""
    from openai import OpenAI

    with background(build_app(mistral)) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        q = client.embeddings.create(input=["capital of France?"], model=mistral.name,
                                     extra_body={"input_type": "query", "task": "SciFact"})
        custom = client.embeddings.create(input=["capital of France?"], model=mistral.name,
                                          extra_body={"input_type": "query", "instruction": "Find geography facts",
                                                      "examples": [["largest ocean?", "The Pacific."]]})
        doc = client.embeddings.create(input=["capital of France?"], model=mistral.name)
    from lganna_rag import Task

    want_q = mistral.encode_queries(["capital of France?"], task="SciFact")
    want_custom = mistral.encode_queries(["capital of France?"], task=Task("custom", "Find geography facts"),
                                         examples=[("largest ocean?", "The Pacific.")])
    want_doc = mistral.encode_documents(["capital of France?"])
    assert _cos(np.array(q.data[0].embedding), want_q)[0] >= 0.9999
    assert _cos(np.array(custom.data[0].embedding), want_custom)[0] >= 0.9999
    assert _cos(np.array(doc.data[0].embedding), want_doc)[0] >= 0.9999
    assert _cos(want_q, want_doc)[0] < 0.999  # the instruction really changed the query vector


def test_concurrent_requests_share_forward_passes(minilm, sts_sentences):
    app = build_app(minilm, settings=ServeSettings(max_batch=64, max_wait_ms=20))
    texts = sts_sentences[:24]
    results: dict[int, list[float]] = {}
    with background(app) as url:
        def one(i: int) -> None:
            r = httpx.post(url + "/v1/embeddings", json={"input": texts[i]}, timeout=60)
            results[i] = r.json()["data"][0]["embedding"]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = httpx.get(url + "/health").json()["stats"]
    assert sorted(results) == list(range(len(texts)))
    got = np.array([results[i] for i in range(len(texts))])
    assert np.min(_cos(got, minilm.encode(texts))) >= 0.9999  # each request got its own text's vector back
    assert stats["requests"] == len(texts) and stats["batches"] < len(texts) and stats["largest_batch"] > 1


def test_bad_requests_get_openai_style_errors(minilm):
    from openai import BadRequestError, NotFoundError, OpenAI

    app = build_app(minilm, settings=ServeSettings(max_inputs=8, max_chars=100, max_body_bytes=4096))
    with background(app) as url:
        post = lambda body, **kw: httpx.post(url + "/v1/embeddings", timeout=30, **({"json": body} | kw))  # noqa: E731

        cases = [
            (post(None, content=b"{not json"), 400, None),
            (post({"model": "minilm"}), 400, "input"),
            (post({"input": []}), 400, "input"),
            (post({"input": [1, 2, 3]}), 400, "input"),                # token ids
            (post({"input": ["ok", None]}), 400, "input"),
            (post({"input": ["x"] * 9}), 413, "input"),                # more inputs than allowed
            (post({"input": ["y" * 101]}), 400, "input"),              # longer than max_chars
            (post({"input": "hi", "encoding_format": "int8"}), 400, "encoding_format"),
            (post({"input": "hi", "input_type": "passage"}), 400, "input_type"),
            (post({"input": "hi", "task": "no-such-task", "input_type": "query"}), 400, "task"),
            (post({"input": "hi", "task": "retrieval"}), 400, "input_type"),  # a task needs input_type=query
            (post({"input": "hi", "dimensions": 128}), 400, "dimensions"),
            (post({"input": "hi", "model": "text-embedding-3-small"}), 404, "model"),
            (post(None, content=b"[" + b"1," * 3000 + b"1]"), 413, None),  # body over max_body_bytes
            (httpx.post(url + "/v1/search", json={"query": "x"}), 404, None),  # no collection served
        ]
        for response, status, param in cases:
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert error["message"] and error["type"] and error["param"] == param
        assert post({"input": "ok"}).status_code == 200  # the server is still fine

        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(NotFoundError, match="not served here"):
            client.embeddings.create(input="hi", model="text-embedding-ada-002")
        with pytest.raises(BadRequestError, match="at most 100"):
            client.embeddings.create(input="z" * 200, model="minilm")


def test_api_key_is_required_when_set(minilm):
    from openai import AuthenticationError, OpenAI

    with background(build_app(minilm, settings=ServeSettings(api_key="s3cret"))) as url:
        assert httpx.post(url + "/v1/embeddings", json={"input": "hi"}).status_code == 401
        wrong = httpx.post(url + "/v1/embeddings", json={"input": "hi"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/health").status_code == 200  # health stays open for load balancers
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).embeddings.create(input="hi", model="minilm")
        ok = OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0).embeddings.create(input="hi", model="minilm")
        assert len(ok.data[0].embedding) == 384


def test_overload_answers_429_with_retry_after_and_recovers(minilm, monkeypatch):
    """A full queue (4 texts) rejects the next request at once; the queued one still finishes correctly."""
    gate, entered = threading.Event(), threading.Event()
    real = minilm.encode_ids

    def slow(*args, **kwargs):
        entered.set()
        assert gate.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(minilm, "encode_ids", slow)
    app = build_app(minilm, settings=ServeSettings(max_queue=4, max_inputs=4, max_wait_ms=0))
    with background(app) as url:
        first: dict[str, httpx.Response] = {}
        thread = threading.Thread(target=lambda: first.update(r=httpx.post(
            url + "/v1/embeddings", json={"input": TEXTS}, timeout=60)))
        thread.start()
        assert entered.wait(30)  # 4 texts in flight: the queue is full
        busy = httpx.post(url + "/v1/embeddings", json={"input": "one more"}, timeout=30)
        assert busy.status_code == 429 and int(busy.headers["Retry-After"]) >= 1
        assert busy.json()["error"]["type"] == "rate_limit_error"
        gate.set()
        thread.join(60)
        after = httpx.post(url + "/v1/embeddings", json={"input": "one more"}, timeout=30)
        health = httpx.get(url + "/health").json()
    assert first["r"].status_code == 200
    assert np.min(_cos(np.array([d["embedding"] for d in first["r"].json()["data"]]), real(minilm.tokenize(TEXTS)[0]))) >= 0.9999
    assert after.status_code == 200 and health["stats"]["rejected"] == 1 and health["queue"]["pending"] == 0


def test_search_endpoint_and_cli_search_server_match_in_process(minilm, tmp_path):
    from click.testing import CliRunner

    from lganna_rag import Index
    from lganna_rag.cli import main

    index = Index(tmp_path / "store", collection="docs", encoder=minilm)
    index.add_texts(TEXTS, metadatas=[{"source": f"doc{i}.md"} for i in range(len(TEXTS))])
    want = index.search("Which city is the capital of France?", k=2, mode="dense")
    want_hybrid = index.search("capital France", k=3, mode="hybrid", where={"source": ["doc1.md", "doc2.md"]})
    with background(build_app(minilm, index=index)) as url:
        got = search_remote(url, "Which city is the capital of France?", k=2, mode="dense")
        hybrid = search_remote(url, "capital France", k=3, mode="hybrid", where={"source": ["doc1.md", "doc2.md"]})
        assert [h["id"] for h in got] == [h.id for h in want] and got[0]["source"] == "doc1.md"
        assert got[0]["text"] == TEXTS[1] and got[0]["score"] == pytest.approx(want[0].score, abs=1e-4)
        assert [h["id"] for h in hybrid] == [h.id for h in want_hybrid]
        bad = httpx.post(url + "/v1/search", json={"query": "x", "k": 0})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "k"
        assert httpx.post(url + "/v1/search", json={"query": "x", "collection": "other"}).status_code == 404

        out = CliRunner().invoke(main, ["search", "Which city is the capital of France?", "--server", url, "-k", "1",
                                        "--json"])
        assert out.exit_code == 0, out.output
        assert [h["source"] for h in json.loads(out.output)] == ["doc1.md"]
        env_out = CliRunner().invoke(main, ["search", "capital of France", "-k", "1"], env={"LGANNA_SERVER": url})
        assert env_out.exit_code == 0 and "doc1.md" in env_out.output and "Paris" in env_out.output
        code = ("import sys; from click.testing import CliRunner; from lganna_rag.cli import main; "
                f"r = CliRunner().invoke(main, ['search', 'capital of France', '--server', {url!r}, '-k', '1']); "
                "assert r.exit_code == 0 and 'doc1.md' in r.output, r.output; "
                "assert not {'torch', 'transformers', 'qdrant_edge', 'qdrant_client', 'starlette'} & set(sys.modules)")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=120)  # the client side stays light
        usage = CliRunner().invoke(main, ["search", "x", "--server", url, "--model", "minilm"])
        assert usage.exit_code == 2 and "does not apply with --server" in usage.output
    index.close()
    down = CliRunner().invoke(main, ["search", "x", "--server", url])
    assert down.exit_code == 1 and "cannot reach the server" in down.output


def test_serve_help_is_light():
    from click.testing import CliRunner

    from lganna_rag.cli import main

    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0 and "Examples:" in result.output and "--api-key" in result.output
    code = ("import sys; from click.testing import CliRunner; from lganna_rag.cli import main; "
            "r = CliRunner().invoke(main, ['serve', '--help']); assert r.exit_code == 0; "
            "assert not {'torch', 'starlette', 'uvicorn', 'qdrant_edge'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_finishes_in_flight_requests_then_exits(sts_sentences, minilm):
    """A real `lganna-rag serve` process: SIGTERM while a long request is encoding -> that request gets all its
    vectors, then the process exits 0 and the port is closed."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lganna_rag.cli", "serve", "--model", "minilm", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        texts = [f"{s} ({i})" for i in range(10) for s in sts_sentences][:600]
        result: dict[str, httpx.Response] = {}
        thread = threading.Thread(target=lambda: result.update(r=httpx.post(
            url + "/v1/embeddings", json={"input": texts, "encoding_format": "base64"}, timeout=120)))
        thread.start()
        while httpx.get(url + "/health", timeout=5).json()["queue"]["pending"] == 0:
            assert thread.is_alive(), "the request finished before the signal could be sent"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        thread.join(120)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    response = result["r"]
    assert response.status_code == 200
    import base64

    got = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in response.json()["data"]])
    assert got.shape == (600, 384) and np.min(_cos(got, minilm.encode(texts))) >= 0.9999
    assert "stopped: finished 1 requests (600 texts" in proc.stdout.read()
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/health", timeout=2)


# ------------------------------------------------------------------------------------------ bad input: always a 4xx
ENGINE_TEXT = ("JSON path", "Helper", "extract", "Traceback", "internal error", "damaged")


def _assert_error(response: httpx.Response, status: int, param: str | None, *words: str) -> dict:
    """An OpenAI-style JSON error with ``status`` and ``param``, whose message has ``words`` and no engine text."""
    assert response.status_code == status, (status, param, response.text)
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["type"]
    assert error["param"] == param, error
    assert all(w in error["message"] for w in words), (words, error)
    assert not any(w in error["message"] for w in ENGINE_TEXT), error
    return error


@pytest.fixture(scope="module")
def search_url(minilm, tmp_path_factory):
    from lganna_rag import Index

    index = Index(tmp_path_factory.mktemp("serve") / "store", collection="docs", encoder=minilm)
    index.add_texts(TEXTS, metadatas=[{"source": f"doc{i}.md"} for i in range(len(TEXTS))])
    with background(build_app(minilm, index=index, settings=ServeSettings(max_chars=1000))) as url:
        yield url
    index.close()


SEARCH_CASES = [  # (body, status, param, words in the message)
    ({"query": "x", "filter": {"chunk": True}}, 400, "filter", ["'chunk'", "boolean"]),  # matched chunk 1 before
    ({"query": "x", "filter": {"chunk": 2**70}}, 400, "filter", ["'chunk'", "64 bits"]),
    ({"query": "x", "filter": {"chunk": None}}, 400, "filter", ["'chunk'", "null"]),
    ({"query": "x", "filter": {"chunk": 1.5}}, 400, "filter", ["'chunk'", "1.5"]),
    ({"query": "x", "filter": {"source": {"$ne": "x"}}}, 400, "filter", ["'source'", "operators"]),
    ({"query": "x", "filter": {"source": [{"a": 1}]}}, 400, "filter", ["'source'", "list of objects"]),
    ({"query": "x", "filter": {"source": []}}, 400, "filter", ["'source'", "empty list"]),
    ({"query": "x", "filter": {"source": ["doc1.md", 1]}}, 400, "filter", ["'source'", "mixes"]),
    ({"query": "x", "filter": {"": "x"}}, 400, "filter", ["non-empty string"]),
    ({"query": "x", "filter": {"a b": "x"}}, 400, "filter", ["'a b'", "payload field name"]),  # an engine error before
    ({"query": "x", "filter": {"a[": "x"}}, 400, "filter", ["'a['"]),
    ({"query": "x", "filter": {"$or": [{"source": "doc1.md"}]}}, 400, "filter", ["operators"]),
    ({"query": "x", "filter": "source=doc1.md"}, 400, "filter", ["must be an object"]),
    ({"query": "x", "filter": {"sorce": "doc1.md"}}, 400, "filter", ["'sorce'", "source"]),  # lists the real keys
    ({"query": 5}, 400, "query", []),
    ({"query": "   "}, 400, "query", []),
    ({"query": "y" * 1001}, 400, "query", ["at most 1000"]),
    ({"query": "x", "k": "5"}, 400, "k", []),
    ({"query": "x", "k": 2.5}, 400, "k", []),
    ({"query": "x", "k": True}, 400, "k", []),
    ({"query": "x", "k": 1001}, 400, "k", []),
    ({"query": "x", "k": [5]}, 400, "k", []),
    ({"query": "x", "mode": 1}, 400, "mode", []),
    ({"query": "x", "mode": ["dense"]}, 400, "mode", []),
    ({"query": "x", "mode": "fuzzy"}, 400, "mode", ["'hybrid'"]),
    ({"query": "x", "mode": {"a": 1}}, 400, "mode", []),
    ({"query": "x", "task": 5}, 400, "task", []),
    ({"query": "x", "task": ""}, 400, "task", []),
    ({"query": "x", "task": "no-such-task"}, 400, "task", ["unknown task"]),
    ({"query": "x", "task": "retrieval", "instruction": "y"}, 400, "task", ["not both"]),
    ({"query": "x", "instruction": 5}, 400, "instruction", []),
    ({"query": "x", "instruction": "z" * 1001}, 400, "instruction", ["at most 1000"]),
    ({"query": "x", "examples": "x"}, 400, "examples", []),
    ({"query": "x", "examples": [["a"]]}, 400, "examples", []),
    ({"query": "x", "examples": [[1, 2]]}, 400, "examples", []),
    ({"query": "x", "examples": [["a" * 600, "b" * 600]]}, 400, "examples", ["at most 1000"]),
    ({"query": "x", "collection": 5}, 404, "collection", []),
    ({"query": "x", "collection": "other"}, 404, "collection", ["'docs'"]),
]
RAW_SEARCH_CASES = [  # bodies json.dumps cannot write: lone surrogates, bad JSON
    (b'{"query": "bad \\ud800 text"}', 400, "query", ["'query'", "surrogate", "U+D800"]),
    (b'{"query": "x", "filter": {"source": "\\udcff"}}', 400, "filter", ["'source'", "surrogate"]),
    (b'{"query": "x", "filter": {"\\ud800": "a"}}', 400, "filter", ["surrogate"]),
    (b'{"query": "x", "instruction": "find \\ud800"}', 400, "instruction", ["surrogate"]),
    (b'{"query": "x", "examples": [["q", "r \\udfff"]]}', 400, "examples", ["examples[0][1]", "surrogate"]),
    (b'{"query": "x", "k": 1' + b"1" * 5000 + b"}", 400, None, ["not valid JSON"]),  # past Python's digit limit
    (b"[" * 100_000 + b"]" * 100_000, 400, None, ["not valid JSON"]),  # RecursionError in json.loads
    (b'{"query": "\xff\xfe"}', 400, None, ["not valid JSON"]),
    (b'["query"]', 400, None, ["JSON object"]),
]


def _assert_cases(url: str, cases: list, raw_cases: list) -> None:
    """Each JSON body (and each raw body) posted to ``url`` gets the expected 4xx error."""
    for body, status, param, words in cases:
        _assert_error(httpx.post(url, json=body, timeout=30), status, param, *words)
    for raw, status, param, words in raw_cases:
        response = httpx.post(url, content=raw, timeout=30, headers={"Content-Type": "application/json"})
        _assert_error(response, status, param, *words)


def test_bad_search_requests_get_4xx_json_never_500(search_url):
    _assert_cases(search_url + "/v1/search", SEARCH_CASES, RAW_SEARCH_CASES)
    _assert_error(httpx.get(search_url + "/v1/search"), 405, None, "GET /v1/search")
    _assert_error(httpx.post(search_url + "/health"), 405, None)
    _assert_error(httpx.get(search_url + "/v1/nothing-here"), 404, None, "no route /v1/nothing-here")
    ok = httpx.post(search_url + "/v1/search", json={"query": "capital of France", "k": None, "mode": None,
                                                     "filter": {"source": ["doc1.md", "doc2.md"]}}, timeout=30)
    assert ok.status_code == 200 and ok.json()["data"][0]["source"] == "doc1.md"  # the server is still fine
    assert httpx.get(search_url + "/health").json()["stats"]["requests"] >= 1


EMBEDDING_CASES = [
    ({"input": {"a": 1}}, 400, "input", ["dict"]),
    ({"input": [["a"]]}, 400, "input", ["token ids"]),
    ({"input": ["a", 1]}, 400, "input", ["'input[1]'"]),
    ({"input": "hi", "encoding_format": 5}, 400, "encoding_format", []),
    ({"input": "hi", "encoding_format": ["float"]}, 400, "encoding_format", []),
    ({"input": "hi", "input_type": 5}, 400, "input_type", []),
    ({"input": "hi", "dimensions": True}, 400, "dimensions", []),
    ({"input": "hi", "dimensions": "384"}, 400, "dimensions", []),
    ({"input": "hi", "input_type": "query", "task": 5}, 400, "task", []),
    ({"input": "hi", "input_type": "query", "instruction": ""}, 400, "instruction", []),
    ({"input": "hi", "input_type": "query", "examples": "x"}, 400, "examples", []),
    ({"input": "hi", "input_type": "query", "examples": [["a", "b", "c"]]}, 400, "examples", []),
    ({"input": "hi", "model": 5}, 404, "model", []),
]
RAW_EMBEDDING_CASES = [
    (b'{"input": ["fine", "bad \\ud800"]}', 400, "input", ["'input[1]'", "surrogate"]),
    (b'{"input": "\\udcff"}', 400, "input", ["'input'", "surrogate"]),
    (b'{"input": "hi", "input_type": "query", "instruction": "\\ud800"}', 400, "instruction", ["surrogate"]),
    (b'{"input": "hi", "input_type": "query", "examples": [["\\ud800", "r"]]}', 400, "examples", ["examples[0][0]"]),
    (b'{"input": "hi", "dimensions": ' + b"9" * 5000 + b"}", 400, None, ["not valid JSON"]),
    (b'{"input": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, None, ["not valid JSON"]),
]


def test_bad_embedding_requests_get_4xx_json_never_500(minilm_url):
    _assert_cases(minilm_url + "/v1/embeddings", EMBEDDING_CASES, RAW_EMBEDDING_CASES)
    _assert_error(httpx.post(minilm_url + "/v1/search", json={"query": "x"}), 404, None, "no collection")
    ok = httpx.post(minilm_url + "/v1/embeddings", json={"input": "hi", "encoding_format": None}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 384


# ------------------------------------------------------------------------------------------ no head-of-line blocking
def _fake_encode(groups: list[list[str]], gate: threading.Event, fail_on: str | None = None):
    """An ``encode`` for EncodeQueue that records each group's texts (the first group waits for ``gate``); a
    text's vector is [its length, its place in the group]."""

    def encode(texts: list[str], prompt_lengths: list[int]):
        groups.append(list(texts))
        assert gate.wait(30)
        if fail_on is not None and fail_on in texts:
            raise RuntimeError("encoder failed")
        return np.array([[len(t), i] for i, t in enumerate(texts)], dtype=np.float32), [len(t) for t in texts]

    return encode


async def _first_group_taken(groups: list[list[str]]) -> None:
    while not groups:
        await __import__("asyncio").sleep(0.001)


def test_encode_queue_splits_large_requests_and_takes_turns():
    """Groups hold at most max_batch texts and max_batch_tokens estimated tokens; a new request that fits in a group
    goes next, alone; larger ones are split and take turns; each request gets its vectors in order."""
    import asyncio

    from lganna_rag.serve import EncodeQueue

    groups: list[list[str]] = []
    gate = threading.Event()

    async def scenario():
        queue = EncodeQueue(_fake_encode(groups, gate), max_batch=4, max_batch_tokens=100)
        queue.start()
        big = asyncio.ensure_future(queue.submit([f"big{i}" for i in range(10)], costs=[10] * 10))
        await _first_group_taken(groups)  # group 0 (big's first 4) is encoding: the others arrive meanwhile
        other = asyncio.ensure_future(queue.submit([f"oth{i}" for i in range(6)], costs=[10] * 6))
        small = asyncio.ensure_future(queue.submit(["s"], costs=[1]))
        heavy = asyncio.ensure_future(queue.submit(["h0", "h1", "h2"], costs=[60, 60, 60]))
        await asyncio.sleep(0.01)
        assert queue.pending == 20
        gate.set()
        results = await asyncio.gather(big, other, small, heavy)
        stats, pending = queue.stats.to_dict(), queue.pending
        await queue.close()
        return results, stats, pending

    (big, other, small, heavy), stats, pending = asyncio.run(scenario())
    assert groups == [
        ["big0", "big1", "big2", "big3"],
        ["s"],  # new and small: alone, right after the group that was encoding when it came (not filled up)
        ["oth0", "oth1", "oth2", "oth3"],  # then the large ones take turns, a new one first
        ["h0", "big4", "big5", "big6"],  # h1 would pass the 100-token budget (60 + 60)
        ["oth4", "oth5", "h1", "big7"],
        ["h2", "big8", "big9"],
    ]
    assert big[0][:, 0].tolist() == [4.0] * 10 and big[1] == [4] * 10  # vectors of 3 groups, in order
    assert other[0][:, 0].tolist() == [4.0] * 6 and small[0].tolist() == [[1.0, 0.0]] and len(heavy[0]) == 3
    assert stats["requests"] == 4 and stats["texts"] == 20 and stats["batches"] == 6 and pending == 0


def test_encode_queue_alternates_small_and_large_so_neither_starves():
    import asyncio

    from lganna_rag.serve import EncodeQueue

    groups: list[list[str]] = []
    gate = threading.Event()

    async def scenario():
        queue = EncodeQueue(_fake_encode(groups, gate), max_batch=2)
        queue.start()
        big = asyncio.ensure_future(queue.submit([f"big{i}" for i in range(8)]))
        await _first_group_taken(groups)
        smalls = [asyncio.ensure_future(queue.submit([f"s{i}"])) for i in range(5)]
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(big, *smalls)
        await queue.close()

    asyncio.run(scenario())
    assert groups == [["big0", "big1"], ["s0", "s1"], ["big2", "big3"], ["s2", "s3"], ["big4", "big5"], ["s4"],
                      ["big6", "big7"]]


def test_encode_queue_failures_and_cancellations_stay_with_their_request():
    """A failing group fails its requests (their later texts are dropped), a request whose rendering fails fails
    alone, a cancelled request's texts are dropped, and the queue's count of pending texts stays right."""
    import asyncio

    from lganna_rag.serve import EncodeQueue

    groups: list[list[str]] = []
    gate = threading.Event()

    def bad_prepare(texts):
        raise ValueError("cannot render")

    async def scenario():
        queue = EncodeQueue(_fake_encode(groups, gate, fail_on="boom3"), max_batch=2)
        queue.start()
        first = asyncio.ensure_future(queue.submit(["a0", "a1"]))
        await _first_group_taken(groups)
        failing = asyncio.ensure_future(queue.submit([f"boom{i}" for i in range(2, 8)]))
        unrenderable = asyncio.ensure_future(queue.submit(["u"], prepare=bad_prepare))
        fine = asyncio.ensure_future(queue.submit(["f0", "f1", "f2"]))
        gone = asyncio.ensure_future(queue.submit([f"gone{i}" for i in range(8)]))
        await asyncio.sleep(0.01)
        gone.cancel()
        gate.set()
        results = await asyncio.gather(first, failing, unrenderable, fine, return_exceptions=True)
        after = await queue.submit(["after"])
        pending = queue.pending
        await queue.close()
        return results, after, pending

    (first, failing, unrenderable, fine), after, pending = asyncio.run(scenario())
    assert isinstance(failing, RuntimeError) and isinstance(unrenderable, ValueError)
    assert len(first[0]) == 2 and len(fine[0]) == 3 and len(after[0]) == 1 and pending == 0
    # boom4.. never encoded, "u" failed alone (no forward pass), gone's texts dropped
    assert groups == [["a0", "a1"], ["boom2", "boom3"], ["f0", "f1"], ["f2"], ["after"]]


def test_a_small_request_is_answered_between_groups_of_a_large_one(minilm, sts_sentences, monkeypatch):
    """A 200-text /v1/embeddings request of ~2k characters each is split into groups of max_batch; a small
    request sent while its first group encodes goes into the next group and is answered long before it ends."""
    n = len(sts_sentences)
    big = [f"{i}: " + " ".join(sts_sentences[(i + j) % n] for j in range(20))[:2000] for i in range(200)]
    real, calls = minilm.encode_ids, []
    entered, gate = threading.Event(), threading.Event()

    def recording(ids, **kwargs):
        calls.append([len(row) for row in ids])
        if len(calls) == 1:
            entered.set()
            assert gate.wait(60)  # hold the first group until the small request is queued
        return real(ids, **kwargs)

    monkeypatch.setattr(minilm, "encode_ids", recording)
    finished: dict[str, tuple[float, httpx.Response]] = {}

    def post(name: str, texts: Any) -> None:
        r = httpx.post(url + "/v1/embeddings", json={"input": texts, "encoding_format": "base64"}, timeout=600)
        finished[name] = (time.monotonic(), r)

    with background(build_app(minilm, settings=ServeSettings(max_batch=16))) as url:
        threads = [threading.Thread(target=post, args=("big", big))]
        threads[0].start()
        assert entered.wait(120)
        threads.append(threading.Thread(target=post, args=("small", "capital of France?")))
        threads[1].start()
        deadline = time.monotonic() + 60
        while httpx.get(url + "/health").json()["queue"]["pending"] < len(big) + 1:
            assert time.monotonic() < deadline, "the small request never reached the queue"
            time.sleep(0.01)
        gate.set()
        for t in threads:
            t.join(600)
        stats = httpx.get(url + "/health").json()["stats"]
    groups = list(calls)
    small_group = [i for i, lengths in enumerate(groups) if min(lengths) < 20]
    assert small_group == [1], groups  # right after the group that was encoding when it came
    assert len(groups) >= 13 and max(len(g) for g in groups) <= 16  # 200 texts in groups of at most 16
    assert finished["small"][0] < finished["big"][0]
    assert finished["small"][1].status_code == 200 and finished["big"][1].status_code == 200
    import base64

    got = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in finished["big"][1].json()["data"]])
    picked = [0, 15, 16, 100, 199]  # across group borders: each vector is its own text's, in order
    assert got.shape == (200, 384) and np.min(_cos(got[picked], real(minilm.tokenize([big[i] for i in picked])[0]))) >= 0.9999
    small = np.frombuffer(base64.b64decode(finished["small"][1].json()["data"][0]["embedding"]), dtype="<f4")
    assert _cos(small, minilm.encode("capital of France?"))[0] >= 0.9999
    assert stats["requests"] == 2 and stats["texts"] == 201


# ------------------------------------------------------------------------------------------ adapters
REPO = Path(__file__).resolve().parents[1]
ADAPTER_QUERIES = ["how do I make the search use hybrid ranking?", "what temperature should green tea be brewed at?",
                   "why does a readiness probe remove a pod?", "how often do I feed a sourdough starter?"]


def test_search_embeds_queries_with_the_collections_adapter(tmp_path):
    """/v1/search ranks exactly as Index.search with the collection's adapter; /health and /v1/models name it (null
    for a plain collection), read from the index each time (undoing the adapter while serving shows at once)."""
    pytest.importorskip("peft")
    from lganna_rag import Index
    from lganna_rag.adapt import adapt_index, undo
    from lganna_rag.serve import adapter_note, describe_adapter

    with Index(tmp_path / "store", collection="docs", model="minilm") as index:
        index.add_files([REPO / "examples" / "docs"], chunk_size=96, overlap=16)
        assert describe_adapter(index) is None and "no adapter" in adapter_note(index)
        with background(build_app(index.encoder, index=index)) as url:  # a plain collection
            assert httpx.get(url + "/health").json()["adapter"] is None
            assert httpx.get(url + "/v1/models").json()["data"][0]["adapter"] is None
        # a few steps on a small collection: only the routing of queries is tested here
        report = adapt_index(index, 5.0, steps=4, seed=0, keep_if_worse=True, batch_size=8)
        assert report.kept and index.adapter is not None

    index = Index(tmp_path / "store", collection="docs")
    try:
        base = index.encoder
        name = index.adapter.name
        assert index.query_encoder is not base
        with background(build_app(base, index=index)) as url:
            health = httpx.get(url + "/health").json()
            model = httpx.get(url + "/v1/models").json()["data"][0]
            assert health["adapter"]["name"] == name == model["adapter"]["name"]
            assert health["adapter"]["dir"] == str(index.adapter) and name in adapter_note(index)
            changed = 0
            for q in ADAPTER_QUERIES:
                for mode in ("hybrid", "dense"):
                    got = search_remote(url, q, k=5, mode=mode)
                    want = index.search(q, k=5, mode=mode)
                    # equal RRF scores (ties) come in either order
                    assert sorted((-round(h["score"], 5), h["id"]) for h in got) == \
                        sorted((-round(h.score, 5), h.id) for h in want), (q, mode)
                    assert [h["score"] for h in got] == pytest.approx([h.score for h in want], abs=1e-4)
                plain = index.search_by_vector(base.encode_queries([q])[0], 5)  # the base model's dense ranking
                changed += [h.score for h in plain] != pytest.approx([h["score"] for h in got], abs=1e-4)
            assert changed > 0  # the adapter really changed the query vectors the server used

            assert undo(index) == name  # back to the base model while serving
            assert httpx.get(url + "/health").json()["adapter"] is None
            got = search_remote(url, ADAPTER_QUERIES[0], k=5, mode="dense")
            want = index.search_by_vector(base.encode_queries([ADAPTER_QUERIES[0]])[0], 5)
            assert [h["score"] for h in got] == pytest.approx([h.score for h in want], abs=1e-4)
    finally:
        index.close()
