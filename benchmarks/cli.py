"""``lganna-rag bench ...``: benchmark commands (imported only when used)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .quality import RESULTS_DIR


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@click.group()
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Torch CPU threads for every benchmark (also OMP_NUM_THREADS for their subprocesses).")
def bench(threads: int | None) -> None:
    """Benchmarks on the shared task data ($LGANNA_DATA): quality, speed, parity, report.

    \b
    Examples:
      lganna-rag bench quality --models bm25,minilm,wordllama,hybrid
      lganna-rag bench quality --models minilm --tasks SciFact,STSBenchmark
      lganna-rag bench quality --models ./my-model --quick
      lganna-rag bench speed
      lganna-rag bench parity
      lganna-rag bench report
      lganna-rag bench --threads 1 serve
      lganna-rag bench int8
    """
    if threads:
        import torch

        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    # The benchmarks read only local data and installed models: mteb and the hub must not download anything.
    # Set here, at the command's entry, not when a benchmark module is imported (that would change the
    # environment of any program importing it); an explicit HF_HUB_OFFLINE=0 still wins.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@bench.command("quality")
@click.option("--models", default="bm25,minilm,wordllama,hybrid", show_default=True,
              help="Comma-separated: bm25, minilm, wordllama, hybrid[:DENSE], a registered name or a model directory.")
@click.option("--tasks", default=None, help="Comma-separated task folders or MTEB names (default: all shared tasks).")
@click.option("--quick", is_flag=True, help="Small deterministic slice of one task per type (smoke test, ~1-2 min).")
@click.option("--dev", is_flag=True, help="The dev/validation splits of the tasks that have one, never a test split "
              "(for choosing a model); writes <out>/<model>.dev.json.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=RESULTS_DIR, show_default=True)
@click.option("--no-report", is_flag=True, help="Do not rewrite leaderboard.md and the plots.")
def quality_cmd(models: str, tasks: str | None, quick: bool, dev: bool, batch_size: int, out_dir: Path,
                no_report: bool) -> None:
    """Score models with mteb's evaluators on every shared task; writes <out>/<model>.json."""
    from .quality import run_quality
    from .report import write_report

    try:
        run_quality(_split(models) or [], _split(tasks), quick=quick, dev=dev, out_dir=out_dir,
                    batch_size=batch_size, progress=click.echo)
    except (KeyError, FileNotFoundError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not quick and not dev and not no_report:
        click.echo(f"report: {write_report(out_dir)}")


@bench.command("speed")
@click.option("--models", default="lganna-minilm,minilm,wordllama", show_default=True, help="Encoders to time (MiniLM is always included as the baseline).")
@click.option("--n", "n", default=1000, show_default=True, help="Number of real texts to encode.")
@click.option("--sizes", default="10000,100000", show_default=True, help="Vector-store sizes ('' = encoders only; earlier store rows are kept).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=RESULTS_DIR, show_default=True)
def speed_cmd(models: str, n: int, sizes: str, out_dir: Path) -> None:
    """Encoder throughput/load time/memory vs MiniLM, matmul ceiling, vector-store latency and recall."""
    from .report import write_report
    from .speed import run_speed

    run_speed(_split(models) or [], n=n, sizes=tuple(int(s) for s in sizes.split(",") if s.strip()), out_dir=out_dir, progress=click.echo)
    click.echo(f"report: {write_report(out_dir)}")


@bench.command("serve")
@click.option("--model", default="minilm", show_default=True)
@click.option("--n", "n", default=400, show_default=True, help="Real texts for the throughput phases.")
@click.option("--clients", default=8, show_default=True, help="Concurrent clients in the main load phase.")
@click.option("--per-request", default=8, show_default=True, help="Texts per request.")
@click.option("--queries", default=100, show_default=True, help="Single queries for the latency phase.")
@click.option("--threads", default=1, show_default=True, help="Torch threads, in the server and in-process.")
@click.option("--max-seconds", default=120.0, show_default=True, help="Time bound of each load phase.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=RESULTS_DIR, show_default=True)
def serve_cmd(model: str, n: int, clients: int, per_request: int, queries: int, threads: int, max_seconds: float,
              out_dir: Path) -> None:
    """`lganna-rag serve` on loopback: throughput vs in-process, p50/p99, overload (429), cold search; serve.json/.md."""
    from .serve_bench import run_serve_bench

    run_serve_bench(model, n=n, clients=clients, per_request=per_request, n_queries=queries, threads=threads,
                    max_seconds=max_seconds, out_dir=out_dir, progress=click.echo)
    click.echo(f"wrote {out_dir / 'serve.json'} and serve.md")


@bench.command("int8")
@click.option("--model", default="minilm", show_default=True)
@click.option("--n", "n", default=500, show_default=True, help="Real texts for the speed comparison.")
@click.option("--rounds", default=3, show_default=True, help="Alternating fp32/int8 timing rounds.")
@click.option("--tasks", default=None, help="Comma-separated task folders (default: the bounded INT8_TASKS slices).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=RESULTS_DIR, show_default=True)
def int8_cmd(model: str, n: int, rounds: int, tasks: str | None, out_dir: Path) -> None:
    """int8 vs fp32 CPU inference in one run: texts/s and quality on a few STS/retrieval/reranking tasks; int8.json/.md."""
    from .int8_bench import INT8_TASKS, run_int8_bench

    picked = {t: INT8_TASKS.get(t) for t in _split(tasks)} if tasks else None
    run_int8_bench(model, n=n, rounds=rounds, tasks=picked, out_dir=out_dir, progress=click.echo)
    click.echo(f"wrote {out_dir / 'int8.json'} and int8.md")


@bench.command("engines")
@click.option("--models", default="minilm,bge-small", show_default=True)
@click.option("--threads", "thread_counts", default="1,2", show_default=True, help="Thread counts to measure at.")
@click.option("--rounds", default=3, show_default=True, help="Alternating timing rounds (each engine's best counts).")
@click.option("--n", "n", default=128, show_default=True, help="Texts per set (queries, 128- and 256-token passages).")
@click.option("--peers-python", default=None, help="Python of the peers' virtualenv (default: ./.venv-peers; make "
                                                   "bench-peers creates it).")
@click.option("--no-quality", is_flag=True, help="Speed only (no cosine/STSB/SciFact per engine).")
@click.option("--index-folder", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Also time `lganna-rag index` of this folder at fp32 and at auto.")
@click.option("--scifact-docs", type=int, default=None, help="SciFact quality over the judged documents plus a fixed "
                                                              "sample up to this many (default: the whole corpus).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=RESULTS_DIR, show_default=True)
def engines_cmd(models: str, thread_counts: str, rounds: int, n: int, peers_python: str | None, no_quality: bool,
                index_folder: Path | None, scifact_docs: int | None, out_dir: Path) -> None:
    """lganna-rag's CPU precisions side by side with sentence-transformers (PyTorch, ONNX, ONNX qint8) and fastembed,
    one process per engine, same model files and texts; engines.json/.md."""
    from .engines import PEERS_PYTHON, run

    peers = peers_python or str(PEERS_PYTHON)
    if not Path(peers).is_file():
        click.echo(f"no peers' virtualenv at {peers} (make bench-peers): lganna-rag's engines only", err=True)
        peers = None
    run(_split(models) or [], [int(t) for t in thread_counts.split(",")], rounds, n, peers, not no_quality, out_dir,
        index_folder, scifact_docs)
    click.echo(f"wrote {out_dir / 'engines.json'} and engines.md")


@bench.command("report")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=RESULTS_DIR, show_default=True)
def report_cmd(out_dir: Path) -> None:
    """Rebuild leaderboard.md and the PNG plots from the result files."""
    from .report import write_report

    click.echo(str(write_report(out_dir)))


@bench.command("parity")
@click.option("--n", "n", default=1000, show_default=True, help="Number of real sentences.")
@click.option("--repeats", default=3, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=RESULTS_DIR / "parity.json",
              show_default=True)
def parity_cmd(n: int, repeats: int, batch_size: int, out_file: Path) -> None:
    """MiniLM through LGAnnaEncoder vs SentenceTransformer: vector parity and throughput ratio; writes parity.json."""
    from .parity import run, write

    result = run(n, repeats, batch_size)
    click.echo(json.dumps(result, indent=2))
    click.echo(f"wrote {write(result, out_file)}")
