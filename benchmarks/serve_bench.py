"""Load benchmark of ``lganna-rag serve`` on loopback: throughput vs in-process, latency, overload, cold start.

Everything runs on 127.0.0.1 and is bounded in count and time. The server is a real ``lganna-rag serve``
subprocess; the clients are threads of this process (httpx, base64 vectors, every vector checked
against the in-process encoder). Throughput is a ratio to in-process ``encode`` of the same texts at the
same torch thread count, measured in the same run (before and after the server phases; their mean).

    python -m lganna_rag.benchmarks.serve_bench --n 400 --clients 8      # or: lganna-rag bench serve
"""

from __future__ import annotations

import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .quality import RESULTS_DIR, _versions


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> dict[str, float]:
    """Current and peak resident memory of a process (Linux /proc)."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out["rss_mb" if line.startswith("VmRSS") else "peak_rss_mb"] = round(int(line.split()[1]) / 1024, 1)
    return out


class Server:
    """A ``lganna-rag serve`` subprocess on a free loopback port."""

    def __init__(self, args: list[str], threads: int, timeout: float = 180.0) -> None:
        """Start it and wait (at most ``timeout`` s) until /health answers."""
        import httpx

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "lganna_rag.cli", "serve", "--port", str(self.port), *args],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stdout.read()[-2000:]}")
            if time.perf_counter() - started > timeout:
                self.stop()
                raise RuntimeError("the server did not start in time")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        self.startup_s = time.perf_counter() - started

    def health(self) -> dict[str, Any]:
        """GET /health."""
        import httpx

        return httpx.get(self.url + "/health", timeout=10).json()

    def stop(self) -> int:
        """SIGTERM, wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def _decode(data: list[dict[str, Any]]) -> np.ndarray:
    return np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])


def load_phase(url: str, texts: list[str], reference: np.ndarray, *, clients: int, per_request: int,
               max_seconds: float) -> dict[str, Any]:
    """``clients`` threads send ``per_request`` texts per request until all texts are done (or time is up)."""
    import httpx

    jobs = [list(range(i, min(i + per_request, len(texts)))) for i in range(0, len(texts), per_request)]
    lock = threading.Lock()
    statuses: dict[int, int] = {}
    worst = [1.0]
    done = [0]
    deadline = time.perf_counter() + max_seconds

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while time.perf_counter() < deadline:
                with lock:
                    if not jobs:
                        return
                    job = jobs.pop(0)
                r = http.post(url + "/v1/embeddings", json={"input": [texts[i] for i in job], "encoding_format": "base64"})
                with lock:
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    got = _decode(r.json()["data"])
                    cos = float(np.min((got * reference[job]).sum(1)))
                    with lock:
                        worst[0] = min(worst[0], cos)
                        done[0] += len(job)
                elif r.status_code == 429:
                    with lock:
                        jobs.append(job)  # retry later, as a client honouring Retry-After would
                    time.sleep(min(float(r.headers.get("Retry-After", 1)), 1.0) / 10)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_seconds + 120)
    wall = time.perf_counter() - start
    return {"clients": clients, "texts_per_request": per_request, "texts_done": done[0], "seconds": round(wall, 3),
            "texts_per_s": round(done[0] / wall, 2), "status_counts": {str(k): v for k, v in sorted(statuses.items())},
            "errors": sum(v for k, v in statuses.items() if k != 200), "min_cosine_to_in_process": round(worst[0], 6)}


def latency_phase(call: Callable[[str], Any], queries: list[str]) -> dict[str, float]:
    """p50/p99 of one call per query, sequentially (ms)."""
    call(queries[0])
    times = []
    for q in queries:
        t = time.perf_counter()
        call(q)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return {"queries": len(queries), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "mean_ms": round(float(ms.mean()), 2)}


def overload_phase(url: str, texts: list[str], *, clients: int, per_request: int, requests: int) -> dict[str, Any]:
    """More concurrent work than the server's queue holds: counts 200/429, checks Retry-After and health."""
    import httpx

    statuses: dict[int, int] = {}
    retry_after: list[int] = []
    lock = threading.Lock()
    counter = [0]

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while True:
                with lock:
                    if counter[0] >= requests:
                        return
                    i = counter[0]
                    counter[0] += 1
                start = (i * per_request) % max(1, len(texts) - per_request)
                r = http.post(url + "/v1/embeddings", json={"input": texts[start:start + per_request]})
                with lock:
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code == 429:
                        retry_after.append(int(r.headers["Retry-After"]))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return {"clients": clients, "texts_per_request": per_request, "requests": requests,
            "status_counts": {str(k): v for k, v in sorted(statuses.items())},
            "retry_after_s": sorted(set(retry_after)), "other_errors": sum(v for k, v in statuses.items() if k not in (200, 429))}


def head_of_line_phase(url: str, big_texts: list[str], queries: list[str]) -> dict[str, Any]:
    """One large /v1/embeddings request, and single queries sent every 0.25 s while it runs: how long a small
    request waits behind a large one (the server splits large requests and alternates them with small ones)."""
    import threading

    import httpx

    done: dict[str, float] = {}

    def big() -> None:
        t = time.perf_counter()
        httpx.post(url + "/v1/embeddings", json={"input": big_texts}, timeout=600).raise_for_status()
        done["seconds"] = time.perf_counter() - t

    thread = threading.Thread(target=big)
    thread.start()
    time.sleep(0.5)
    small: list[float] = []
    with httpx.Client(timeout=600) as http:
        for q in queries:
            if "seconds" in done:
                break
            t = time.perf_counter()
            http.post(url + "/v1/embeddings", json={"input": q, "input_type": "query"}).raise_for_status()
            small.append(time.perf_counter() - t)
            time.sleep(0.25)
    thread.join()
    ms = np.array(small) * 1000 if small else np.zeros(1)
    return {"big_texts": len(big_texts), "big_chars": sum(map(len, big_texts)), "big_seconds": round(done["seconds"], 2),
            "small_requests_during": len(small), "small_p50_ms": round(float(np.median(ms)), 1),
            "small_max_ms": round(float(ms.max()), 1)}


def cold_search(args: list[str], runs: int, threads: int) -> dict[str, Any]:
    """Wall time of a whole ``lganna-rag search`` process (import, model load or HTTP, query, print)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "lganna_rag.cli", "search", *args], env=env, capture_output=True,
                             text=True, timeout=300)
        times.append(time.perf_counter() - t)
        if out.returncode != 0:
            raise RuntimeError(f"lganna-rag search failed: {out.stderr[-1500:]}")
    return {"runs": runs, "median_s": round(statistics.median(times), 3), "all_s": [round(x, 3) for x in times]}


def run_serve_bench(model: str = "minilm", *, n: int = 400, clients: int = 8, per_request: int = 8,
                    n_queries: int = 100, threads: int = 1, max_seconds: float = 120.0, out_dir: Path = RESULTS_DIR,
                    progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole benchmark; writes ``<out_dir>/serve.json`` and ``serve.md``."""
    import httpx
    import torch

    from lganna_rag import Index, LGAnnaEncoder

    from .speed import speed_texts

    torch.set_num_threads(threads)
    texts = speed_texts(n)
    queries = [t for t in speed_texts(n + 5 * n_queries)[n:] if len(t) < 300][:n_queries]  # sentences not in `texts`
    encoder = LGAnnaEncoder.from_pretrained(model, device="cpu")

    def in_process() -> float:
        t = time.perf_counter()
        encoder.encode(texts, batch_size=32)
        return len(texts) / (time.perf_counter() - t)

    encoder.encode(texts[:8])
    reference = encoder.encode(texts, batch_size=32)
    before = in_process()
    progress(f"in-process encode: {before:.1f} texts/s ({n} texts, {threads} thread(s))")
    single_in_process = latency_phase(lambda q: encoder.encode_queries([q]), queries)

    result: dict[str, Any] = {"versions": _versions(), "model": model, "threads": threads, "texts": n,
                              "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        docs = speed_texts(1000)[-200:]  # SciFact abstracts
        with Index(store, collection="bench", encoder=encoder) as index:
            index.add_texts(docs, metadatas=[{"source": f"doc{i}.txt"} for i in range(len(docs))])
        query = "Do statins lower the risk of stroke?"
        progress("cold `lganna-rag search` without a server (loads torch and the model) ...")
        cold_local = cold_search([query, "--path", str(store), "-c", "bench", "-k", "3", "--json"], 2, threads)
        progress(f"  {cold_local['median_s']:.2f} s")

        server = Server(["--model", model, "--collection", "bench", "--path", str(store)], threads)
        progress(f"server up in {server.startup_s:.1f} s at {server.url}")
        try:
            cold_remote = cold_search([query, "--server", server.url, "-k", "3", "--json"], 3, threads)
            progress(f"cold `lganna-rag search --server`: {cold_remote['median_s']:.2f} s")
            with httpx.Client(timeout=60) as http:
                single_server = latency_phase(lambda q: http.post(server.url + "/v1/embeddings", json={
                    "input": q, "input_type": "query"}).raise_for_status(), queries)
                search_server = latency_phase(lambda q: http.post(server.url + "/v1/search", json={
                    "query": q, "k": 5, "mode": "hybrid"}).raise_for_status(), queries[: max(10, n_queries // 2)])
            progress(f"single query p50/p99: server {single_server['p50_ms']}/{single_server['p99_ms']} ms, "
                     f"in-process {single_in_process['p50_ms']}/{single_in_process['p99_ms']} ms")
            sequential = load_phase(server.url, texts, reference, clients=1, per_request=per_request, max_seconds=max_seconds)
            loaded = load_phase(server.url, texts, reference, clients=clients, per_request=per_request, max_seconds=max_seconds)
            big = load_phase(server.url, texts, reference, clients=2, per_request=64, max_seconds=max_seconds)
            long_texts = [" ".join(texts[i % len(texts)] for i in range(j, j + 40))[:10_000] for j in range(400)]
            hol = head_of_line_phase(server.url, long_texts, queries * 10)
            progress(f"a {hol['big_chars'] / 1e6:.1f} MB request took {hol['big_seconds']} s; {hol['small_requests_during']} "
                     f"single queries meanwhile answered in p50 {hol['small_p50_ms']} ms, max {hol['small_max_ms']} ms")
            health = server.health()
            memory = _rss_mb(server.proc.pid)
        finally:
            exit_status = server.stop()
    after = in_process()
    baseline = (before + after) / 2
    for phase in (sequential, loaded, big):
        phase["ratio_to_in_process"] = round(phase["texts_per_s"] / baseline, 3)
    progress(f"in-process again: {after:.1f} texts/s; server: {clients} clients x {per_request} texts "
             f"{loaded['texts_per_s']:.1f} texts/s = {loaded['ratio_to_in_process']:.2f}x in-process "
             f"(1 client {sequential['ratio_to_in_process']:.2f}x, 2 x 64 texts {big['ratio_to_in_process']:.2f}x)")

    progress("overload: a server with --max-queue 16 and 4x that many texts in flight ...")
    small = Server(["--model", model, "--max-queue", "16", "--max-inputs", "16", "--max-wait-ms", "2"], threads)
    try:
        rss_before = _rss_mb(small.proc.pid)
        overload = overload_phase(small.url, texts, clients=8, per_request=8, requests=min(80, max(16, n // 4)))
        overload["healthy_after"] = small.health()["status"] == "ok"
        overload["server_memory_before"] = rss_before
        overload["server_memory_after"] = _rss_mb(small.proc.pid)
        overload["server_stats"] = small.health()["stats"]
    finally:
        overload["exit_status"] = small.stop()
    progress(f"  {overload['status_counts']} (Retry-After {overload['retry_after_s']}), healthy after: "
             f"{overload['healthy_after']}, RSS {overload['server_memory_before']} -> {overload['server_memory_after']}")

    result.update({
        "in_process_texts_per_s": {"before": round(before, 2), "after": round(after, 2), "baseline": round(baseline, 2)},
        "server_startup_s": round(server.startup_s, 2), "server_exit_status": exit_status,
        "single_query_latency": {"server_embeddings": single_server, "server_search_hybrid_k5": search_server,
                                 "in_process_encode_queries": single_in_process},
        "load": {"one_client": sequential, "concurrent": loaded, "two_clients_64_texts": big},
        "small_during_large": hol,
        "server_batching": health["stats"], "server_memory": memory,
        "cold_search": {"without_server": cold_local, "with_server": cold_remote},
        "overload": overload,
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "serve.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "serve.md").write_text(render_markdown(result))
    return result


def render_markdown(r: dict[str, Any]) -> str:
    """A short Markdown summary of ``serve.json``."""
    lat = r["single_query_latency"]
    load = r["load"]
    lines = [
        "# `lganna-rag serve` load benchmark (loopback)", "",
        f"Model `{r['model']}`, {r['threads']} torch thread(s) in the server and in-process, {r['texts']} real texts "
        f"(STSBenchmark sentences and SciFact abstracts), {r['cpu_count']} CPUs shared by server and clients. "
        "Written by `python -m lganna_rag.benchmarks.serve_bench` (`lganna-rag bench serve`).", "",
        f"In-process `encode`: {r['in_process_texts_per_s']['baseline']:.1f} texts/s (mean of "
        f"{r['in_process_texts_per_s']['before']:.1f} before and {r['in_process_texts_per_s']['after']:.1f} after the server runs).", "",
        "| load | texts/s | ratio to in-process | errors | min cosine to in-process |", "|---|---:|---:|---:|---:|",
    ]
    for label, key in (("1 client", "one_client"), ("concurrent clients", "concurrent"), ("2 clients x 64 texts", "two_clients_64_texts")):
        p = load[key]
        lines.append(f"| {label} ({p['clients']} x {p['texts_per_request']} texts/request) | {p['texts_per_s']:.1f} | "
                     f"{p['ratio_to_in_process']:.2f} | {p['errors']} | {p['min_cosine_to_in_process']:.6f} |")
    s = r["server_batching"]
    lines += ["", f"Server batching over the whole run: {s['requests']} requests, {s['texts']} texts in {s['batches']} "
              f"forward-pass groups (mean {s['mean_batch']}, largest {s['largest_batch']}).", "",
              "| single query | p50 ms | p99 ms |", "|---|---:|---:|"]
    for label, key in (("in-process `encode_queries`", "in_process_encode_queries"), ("server /v1/embeddings", "server_embeddings"),
                       ("server /v1/search (hybrid, k=5)", "server_search_hybrid_k5")):
        lines.append(f"| {label} | {lat[key]['p50_ms']} | {lat[key]['p99_ms']} |")
    h = r.get("small_during_large")
    if h:
        lines += ["", f"Small during large: one request of {h['big_texts']} texts ({h['big_chars'] / 1e6:.1f} MB) took "
                  f"{h['big_seconds']} s; {h['small_requests_during']} single queries sent meanwhile (one every 0.25 s) "
                  f"were answered in p50 {h['small_p50_ms']} ms, at most {h['small_max_ms']} ms."]
    c = r["cold_search"]
    o = r["overload"]
    lines += ["", f"Cold `lganna-rag search` (a whole process, median): {c['without_server']['median_s']:.2f} s loading the "
              f"model vs {c['with_server']['median_s']:.2f} s with `--server` (server start-up {r['server_startup_s']:.1f} s, "
              f"once).", "",
              f"Overload (`--max-queue 16`, {o['clients']} clients x {o['texts_per_request']} texts, {o['requests']} requests): "
              f"status counts {o['status_counts']}, Retry-After {o['retry_after_s']} s, other errors {o['other_errors']}, "
              f"healthy after: {o['healthy_after']}; server RSS {o['server_memory_before']['rss_mb']} MB before, "
              f"{o['server_memory_after']['rss_mb']} MB after (peak {o['server_memory_after']['peak_rss_mb']} MB); "
              f"exit status after SIGTERM {o['exit_status']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-request", type=int, default=8)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    a = parser.parse_args()
    run_serve_bench(a.model, n=a.n, clients=a.clients, per_request=a.per_request, n_queries=a.queries,
                    threads=a.threads, max_seconds=a.max_seconds, out_dir=a.out)
