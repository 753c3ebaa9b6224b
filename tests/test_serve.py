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
