"""The lganna-rag CLI: commands, output, exit codes, and crash safety under SIGKILL and Ctrl-C."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from files import assert_matches_clean_run, assert_same_points, snapshot, write_corpus, write_topics
from files import one_thread  # noqa: F401  (autouse: one torch thread)
from lganna_rag.cli import main
from lganna_rag.index import Index

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli(mistral_dir, tmp_path):
    """Invoke the CLI in-process with the tiny model and a fresh store; returns (result, parsed JSON or None)."""
    runner = CliRunner()

    def invoke(*args: str, model: bool = True, input: str | None = None, store: Path | None = None):
        extra = ["--path", str(store or tmp_path / "store")] if args[0] in ("index", "search", "info", "delete") else []
        if model and args[0] in ("index", "search", "embed"):
            extra += ["--model", str(mistral_dir)]
        return runner.invoke(main, [*args, *extra], input=input, catch_exceptions=False)

    return invoke


@pytest.mark.parametrize("command", [[], ["index"], ["search"], ["info"], ["embed"], ["delete"], ["check"]])
def test_help_has_examples_and_is_light(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "Examples:" in result.output or "Quick start:" in result.output
    code = ("import sys; from click.testing import CliRunner; from lganna_rag.cli import main; "
            f"r = CliRunner().invoke(main, {command + ['--help']!r}); assert r.exit_code == 0; "
            "assert not {'torch', 'qdrant_edge', 'qdrant_client', 'langchain_core'} & set(sys.modules), sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_index_search_info_delete_round_trip(cli, tmp_path):
    docs = write_topics(tmp_path / "docs")
    result = cli("index", str(docs), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["files_indexed"] == 3 and summary["chunks_total"] == summary["chunks_written"] >= 3
    again = json.loads(cli("index", str(docs), "--json").stdout)
    assert again["files_unchanged"] == 3 and again["chunks_written"] == 0

    hits = json.loads(cli("search", "basalt lava flows", "--mode", "sparse", "-k", "2", "--json").stdout)
    assert hits[0]["source"] == "volcanoes.md" and set(hits[0]) >= {"id", "score", "text", "chunk", "start", "end"}
    human = cli("search", "nine bars of pressure", "--hybrid", "-k", "1").output
    assert "espresso.md #0" in human and "Espresso is brewed" in human
    only = json.loads(cli("search", "anything", "--filter", "source=chess.txt", "--json").stdout)
    assert {h["source"] for h in only} == {"chess.txt"}

    info = json.loads(cli("info", "--json").stdout)
    assert info["chunks"] == summary["chunks_total"] and info["files"] == 3 and info["collections"] == ["default"]
    assert "model:" in cli("info").output
    assert cli("delete", "--source", "chess.txt").output.strip() == "deleted 1 chunks"
    assert cli("delete", str(docs / "volcanoes.md")).output.strip() == "deleted 1 chunks"
    assert json.loads(cli("info", "--json").stdout)["files"] == 1
    assert cli("delete", "--all", "--yes").exit_code == 0
    assert json.loads(cli("info", "--json").stdout)["exists"] is False


def test_human_summary_reports_skips_with_reasons_and_strict_exit_code(cli, tmp_path):
    docs = write_topics(tmp_path / "docs")
    (docs / "blob.txt").write_bytes(b"\x00\x00binary")
    (docs / "empty.md").write_text("")
    result = cli("index", str(docs))
    assert result.exit_code == 0
    assert "3 files indexed, 0 unchanged, 2 skipped, 0 failed" in result.output
    assert "skipped (binary file): blob.txt" in result.output and "skipped (empty file): empty.md" in result.output
    strict = cli("index", str(docs), "--strict")
    assert strict.exit_code == 1 and "3 unchanged, 2 skipped" in strict.output


def test_usage_errors_exit_2(cli, tmp_path, minilm):
    docs = write_topics(tmp_path / "docs")
    cases = [
        (("index", str(tmp_path / "missing")), "path '" + str(tmp_path / "missing") + "' does not exist"),
        (("index",), "Missing argument 'PATHS...'"),
        (("search", "q"), "collection 'default' does not exist"),
        (("search", "q", "--filter", "source"), "expected KEY=VALUE"),
        (("search", "q", "--task", "NoSuchTask"), "unknown task"),
        (("search", "q", "--task", "retrieval", "--instruction", "x"), "--task or --instruction, not both"),
        (("search", "q", "-k", "0"), "0 is not in the range"),
        (("delete",), "give PATHS, --source or --all"),
        (("index", str(docs), "--chunk-size", "9000"), "chunk size 9000 is more than model"),
        (("embed", "--task", "retrieval"), "add --query"),
    ]
    for args, message in cases:
        result = cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    assert cli("index", str(docs)).exit_code == 0
    mismatch = cli("search", "q", "--model", "minilm", model=False)
    assert mismatch.exit_code == 2 and "holds 64-d vectors" in mismatch.output and "--recreate" in mismatch.output
    both = CliRunner().invoke(main, ["info", "--path", str(tmp_path), "--url", "http://127.0.0.1:9"])
    assert both.exit_code == 2 and "not both" in both.output


def test_unreachable_url_exits_1_with_a_clear_message(cli):
    result = CliRunner().invoke(main, ["info", "--url", "http://127.0.0.1:9", "--timeout", "1"])
    assert result.exit_code == 1 and "did not answer within 1 s" in result.output and "QDRANT_URL" in result.output


def test_unwritable_store_exits_1_with_a_clear_message(cli, tmp_path):
    docs = write_topics(tmp_path / "docs")
    (tmp_path / "afile").write_text("")
    result = cli("index", str(docs), store=tmp_path / "afile" / "store")
    assert result.exit_code == 1 and "Not a directory" in result.output and "Traceback" not in result.output


def test_search_with_task_instruction_and_examples_file(cli, tmp_path, mistral):
    docs = write_topics(tmp_path / "docs")
    cli("index", str(docs))
    shots = tmp_path / "shots.jsonl"
    shots.write_text('{"query": "coffee drink", "response": "Espresso is brewed..."}\n["rock", "Magma rises"]\n')
    with_examples = json.loads(cli("search", "sharp chess positions", "--task", "retrieval", "--examples", str(shots),
                                   "--dense", "--json").stdout)
    plain = json.loads(cli("search", "sharp chess positions", "--instruction", "Find the chess opening",
                           "--mode", "dense", "--json").stdout)
    # the tiny model is random, so compare scores with what the encoder gives for the same prompt
    from lganna_rag.prompts import Task

    docs_vec = {h["id"]: mistral.encode_documents([h["text"]])[0] for h in with_examples}
    q = mistral.encode_queries(["sharp chess positions"], task="retrieval",
                               examples=[("coffee drink", "Espresso is brewed..."), ("rock", "Magma rises")])[0]
    for h in with_examples:
        assert h["score"] == pytest.approx(float(q @ docs_vec[h["id"]]), abs=1e-4)
    q2 = mistral.encode_queries(["sharp chess positions"], task=Task("custom", "Find the chess opening"))[0]
    for h in plain:
        assert h["score"] == pytest.approx(float(q2 @ mistral.encode_documents([h["text"]])[0]), abs=1e-4)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": 1}\n')
    result = cli("search", "q", "--examples", str(bad))
    assert result.exit_code == 2 and "example 0 must be" in result.output


def test_embed_stdin_lines_and_files(cli, tmp_path, mistral):
    result = cli("embed", input="first line\n\nsecond line\n")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["line"], r["text"]) for r in rows] == [(1, "first line"), (3, "second line")]
    np.testing.assert_allclose([r["vector"] for r in rows], mistral.encode_documents(["first line", "second line"]),
                               atol=1e-6)
    query = json.loads(cli("embed", "--query", "--task", "retrieval", "--no-text", input="first line\n").stdout)
    assert "text" not in query
    np.testing.assert_allclose(query["vector"], mistral.encode_queries(["first line"], task="retrieval")[0], atol=1e-6)
    docs = write_topics(tmp_path / "docs")
    (docs / "empty.md").write_text("")
    runner_result = cli("embed", str(docs / "volcanoes.md"), str(docs / "empty.md"), "--chunk-size", "16", "--overlap", "2")
    rows = [json.loads(line) for line in runner_result.stdout.splitlines()]
    text = (docs / "volcanoes.md").read_text()
    assert len(rows) > 1 and all(text[r["start"]:r["end"]] == r["text"] for r in rows)
    assert "skipped " + str(docs / "empty.md") + ": empty file" in runner_result.stderr


def test_demo_question_through_the_cli_with_minilm(tmp_path, minilm):
    runner = CliRunner()
    store = ["--path", str(tmp_path / "store")]
    indexed = runner.invoke(main, ["index", str(REPO / "examples" / "docs"), *store, "--model", "minilm", "--json"])
    summary = json.loads(indexed.stdout)
    # the rate leaves out loading the model, which is reported on its own
    assert summary["load_seconds"] > 0 and summary["chunks_per_second"] == pytest.approx(
        summary["chunks_written"] / (summary["seconds"] - summary["load_seconds"]), rel=0.02)
    out = runner.invoke(main, ["search", "how hot should the water be for green tea?", "-k", "1", *store]).output
    assert "tea-brewing.html #0" in out and " 1. RRF 0.0333  tea-brewing.html #0" in out  # hybrid by default
    dense = runner.invoke(main, ["search", "how hot should the water be for green tea?", "-k", "1", "--dense", *store])
    assert " 1. cos 0.7" in dense.output and "warning" not in dense.stderr
    # minilm has no prompt template: an instruction changes nothing, and the CLI says so once
    told = runner.invoke(main, ["search", "how hot should the water be for green tea?", "-k", "1", "--dense", *store,
                                "--instruction", "Find brewing advice"])
    assert told.stdout == dense.stdout
    assert told.stderr.count("warning: model 'minilm' has no prompt template") == 1 and "no effect" in told.stderr
    info = runner.invoke(main, ["info", *store]).output
    assert "chunking:     252 tokens, overlap 32 (the default 256, capped at the most this model's input holds)" in info


def test_search_modes_missing_collection_task_typo_and_unknown_model(cli, tmp_path):
    docs = write_topics(tmp_path / "docs")
    assert cli("index", str(docs), "-c", "notes").exit_code == 0
    missing = cli("search", "q")
    assert missing.exit_code == 2 and "collection 'default' does not exist in" in missing.output
    assert "it holds 'notes' (pick one with --collection NAME)" in missing.output
    assert missing.output.count("'default'") == 1  # named once
    sparse = cli("search", "basalt lava", "-c", "notes", "--sparse", "-k", "1")
    assert sparse.exit_code == 0 and " 1. BM25 " in sparse.output and "volcanoes.md #0" in sparse.output
    both = cli("search", "q", "-c", "notes", "--sparse", "--dense")
    assert both.exit_code == 2 and "choose one ranking: --dense and --sparse conflict" in both.output
    typo = cli("search", "q", "-c", "notes", "--task", "retreival")
    assert typo.exit_code == 2 and "did you mean 'retrieval'?" in typo.output and "--instruction" in typo.output
    assert "Task(" not in typo.output  # a CLI user gets CLI words, not the Python API
    # an unknown model fails while parsing, before torch is imported, and suggests the close name
    code = ("import sys; from click.testing import CliRunner; from lganna_rag.cli import main; "
            f"r = CliRunner().invoke(main, ['search', 'q', '--path', {str(tmp_path / 'store')!r}, '--model', 'minlm']); "
            "assert r.exit_code == 2, r.output; assert \"did you mean 'minilm'?\" in r.output, r.output; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_delete_all_without_a_terminal_suggests_yes(cli, tmp_path):
    assert cli("index", str(write_topics(tmp_path / "docs"))).exit_code == 0
    result = cli("delete", "--all")  # CliRunner's stdin is no terminal: nothing can answer the question
    assert result.exit_code == 2 and "add --yes" in result.output
    assert json.loads(cli("info", "--json").stdout)["exists"] is True  # nothing deleted


def test_same_named_files_from_two_folders_print_distinguishable_paths(cli, tmp_path):
    for name in ("alpha", "beta"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "README.md").write_text(f"The {name} project keeps its volcano notes here.\n")
    assert cli("index", str(tmp_path / "alpha"), str(tmp_path / "beta")).exit_code == 0
    out = cli("search", "volcano notes", "-k", "2", "--sparse").output
    assert "alpha/README.md #0" in out and "beta/README.md #0" in out


def test_display_names_use_the_shortest_distinguishing_tail():
    from lganna_rag.cli import display_names

    files = [("/a/x/docs", "README.md"), ("/b/y/docs", "README.md"), ("/a/x/docs", "guide.md"), (None, None),
             ("/a/x/docs", "README.md")]
    assert display_names(files) == ["x/docs/README.md", "y/docs/README.md", "guide.md", None, "x/docs/README.md"]


# ---------------------------------------------------------------------------------------------- crash safety
def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lganna_rag.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_for_batches(proc: subprocess.Popen, n: int) -> list[str]:
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if sum(ln.startswith("wrote ") for ln in lines) >= n:
            return lines
    raise AssertionError(f"the run ended before {n} batches were written:\n{''.join(lines)}")


def _partial_files(index: Index) -> list[str]:
    """Files whose stored chunks are not a complete set of one version."""
    by_file: dict[str, list[dict]] = {}
    for _, p in index.backend.scroll(["source", "n_chunks", "file_hash"]):
        by_file.setdefault(p["source"], []).append(p)
    return [s for s, ps in by_file.items() if len(ps) != ps[0]["n_chunks"] or len({p["file_hash"] for p in ps}) > 1]


def test_kill_9_mid_run_then_rerun_equals_a_clean_run(mistral, mistral_dir, tmp_path):
    # 64 files of ~20 chunks (5 batches, so the kill lands well before the end); the first 256-chunk batch
    # ends inside doc012.md
    docs = write_corpus(tmp_path / "docs", n_files=64, words=160, seed=1)
    store = tmp_path / "store"
    args = ["index", str(docs), "--path", str(store), "--model", str(mistral_dir), "--chunk-size", "16", "--overlap", "2"]
    with Index(tmp_path / "clean", encoder=mistral) as clean:
        clean.add_files([docs], chunk_size=16, overlap=2)
        expected = snapshot(clean)

    # 1. a fresh run killed after its first batch: some files complete, one cut in the middle
    proc = _start(args)
    _wait_for_batches(proc, 1)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    with Index(store, encoder=mistral) as killed:
        assert 0 < killed.count() < len(expected) and _partial_files(killed) == ["doc012.md"]
    with Index(store, encoder=mistral) as index:  # the next run (same code as the CLI's, in-process for speed)
        report = index.add_files([docs])
        assert len(report.unchanged) == 12 and report.chunks_reused > 0 and report.indexed[0] == "doc012.md"
        assert_same_points(snapshot(index), expected)

    # 2. most files changed (every chunk id changes), two deleted, three added; the run replacing them is
    #    killed after its first batch, leaving files with old and new chunks side by side
    for i in range(64):
        if i % 4:
            path = docs / f"doc{i:03d}.md"
            path.write_text(path.read_text().replace("\n\n", "\n\nAn inserted paragraph shifts every chunk.\n\n", 1))
    for i in (4, 8):
        (docs / f"doc{i:03d}.md").unlink()
    for p in write_corpus(tmp_path / "extra", n_files=3, words=160, seed=2).iterdir():
        shutil.move(str(p), docs / f"new-{p.name}")
    proc = _start(args)
    _wait_for_batches(proc, 1)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    index = Index(store, encoder=mistral)
    assert _partial_files(index)  # a file holding chunks of two versions
    report = index.add_files([docs])
    assert not report.interrupted and report.chunks_reused > 0 and report.pruned == ["doc004.md", "doc008.md"]
    assert_matches_clean_run(index, docs, mistral, tmp_path / "clean2", chunk_size=16, overlap=2)


def test_ctrl_c_stops_after_the_current_batch_and_exits_130(mistral, mistral_dir, tmp_path):
    docs = write_corpus(tmp_path / "docs", n_files=64, words=160, seed=3)
    store = tmp_path / "store"
    proc = _start(["index", str(docs), "--path", str(store), "--model", str(mistral_dir), "--chunk-size", "16",
                   "--overlap", "2", "--json"])
    _wait_for_batches(proc, 1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Stopping after the current batch" in err and "Run the same command again" in err
    summary = json.loads(out)
    assert summary["interrupted"] is True and 0 < summary["chunks_written"] == summary["chunks_total"]
    index = Index(store, encoder=mistral)
    report = index.add_files([docs])
    assert not report.interrupted and report.chunks_reused + report.chunks_written + sum(
        index.count(where={"source": s}) for s in report.unchanged) == index.count()
    assert_matches_clean_run(index, docs, mistral, tmp_path / "clean", chunk_size=16, overlap=2)


# ---------------------------------------------------------------------------------------------- issue 14
def test_file_names_with_brackets_are_printed_as_they_are(cli, tmp_path):
    docs = write_topics(tmp_path / "docs")
    (docs / "x[b]y.md").write_text("# Brackets\n\nA file whose name looks like markup.")
    (docs / "[red]empty.md").write_text("")
    (docs / "[bold]broken.pdf").write_text("not a pdf")
    (docs / "x[").mkdir()
    (docs / "x[" / "sub]y.md").write_text("")  # source "x[/sub]y.md": a closing tag rich would choke on
    result = cli("index", str(docs))
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "4 files indexed" in result.output
    assert "skipped (empty file): [red]empty.md, x[/sub]y.md" in result.output
    assert "failed (not a PDF file (no %PDF header)): [bold]broken.pdf" in result.output
    hits = json.loads(cli("search", "markup", "--mode", "sparse", "--json").stdout)
    assert hits[0]["source"] == "x[b]y.md"


def test_unknown_filter_key_is_a_usage_error_listing_the_keys(cli, tmp_path):
    cli("index", str(write_topics(tmp_path / "docs")))
    result = cli("search", "lava", "--filter", "sorce=volcanoes.md")
    assert result.exit_code == 2 and "unknown filter key 'sorce'" in result.output and "path, root, source" in result.output


def test_store_lock_is_taken_before_anything_is_created(cli, tmp_path):
    from lganna_rag.stores import EdgeBackend

    docs = write_topics(tmp_path / "docs")
    holder = EdgeBackend(tmp_path / "store", "default")
    holder.lock()  # another process (or Index) is creating or using this collection
    result = cli("index", str(docs))
    assert result.exit_code == 1 and "in use by another process" in result.output
    assert "delete" not in result.output.lower() and "Traceback" not in result.output
    assert not (tmp_path / "store" / "default").exists()  # nothing was created
    holder.close()
    assert cli("index", str(docs)).exit_code == 0


def test_two_indexers_creating_the_same_store_one_wins_the_other_is_told_it_is_busy(mistral, mistral_dir, tmp_path):
    docs = write_corpus(tmp_path / "docs", n_files=48, words=160, seed=5)
    store = tmp_path / "store"
    args = ["index", str(docs), "--path", str(store), "--model", str(mistral_dir), "--chunk-size", "16", "--overlap",
            "2", "--json"]
    procs = [_start(args), _start(args)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    errors = "".join(err for _, err in outs)
    assert codes == [0, 1], errors
    loser_err = next(err for p, (_, err) in zip(procs, outs) if p.returncode == 1)
    assert "in use by another process" in loser_err and "Traceback" not in errors
    assert "delete" not in loser_err.lower() and "corrupt" not in errors
    winner = json.loads(next(out for p, (out, _) in zip(procs, outs) if p.returncode == 0))
    assert winner["files_indexed"] == 48 and winner["chunks_total"] == winner["chunks_written"]
    with Index(store, encoder=mistral) as index:
        again = index.add_files([docs])
        assert len(again.unchanged) == 48 and again.chunks_written == 0
        assert_matches_clean_run(index, docs, mistral, tmp_path / "clean", chunk_size=16, overlap=2)


def _store_file_kinds(store: Path) -> dict[str, Path]:
    """One file per kind of file in an edge store (segment ids and payload-index names folded)."""
    import re

    kinds: dict[str, Path] = {}
    for p in sorted(store.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            rel = p.relative_to(store).as_posix()
            kind = re.sub(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", "SEGMENT", rel)
            kind = re.sub(r"/[0-9a-z]{24}-(source|root|path)-", "/INDEX-", kind)
            kinds.setdefault(kind, p.relative_to(store))
    return kinds


def _corrupt(path: Path, seed: int) -> None:
    """Overwrite up to 64 bytes in the middle of a file with random bytes (the size stays the same)."""
    import random

    size = path.stat().st_size
    n = min(64, size)
    with open(path, "r+b") as fh:
        fh.seek(max(0, size // 2 - n // 2))
        fh.write(random.Random(seed).randbytes(n))


def test_fault_injection_every_store_file_deleted_truncated_or_corrupted(mistral, mistral_dir, tmp_path, monkeypatch):
    """Each kind of store file, deleted, truncated or with bytes overwritten: the right answer, a clear error naming
    the store and the repair, or an automatic repair; never a traceback. A wrong answer after overwritten bytes is
    never silent: ``check`` reports the damage. ``check --repair`` then restores the exact search results, or says
    to rebuild with --recreate."""
    from lganna_rag.encoder import LGAnnaEncoder

    loader = LGAnnaEncoder.from_pretrained.__func__
    monkeypatch.setattr(LGAnnaEncoder, "from_pretrained", classmethod(  # the model once: ~600 CLI calls follow
        lambda cls, name=None, **kw: mistral if str(name) == str(mistral_dir) else loader(cls, name, **kw)))
    docs = write_corpus(tmp_path / "docs", n_files=12, words=120, seed=7)
    base = tmp_path / "base"
    runner = CliRunner()
    model = ["--model", str(mistral_dir)]

    def run(store: Path, *args: str):
        result = runner.invoke(main, [*args, "--path", str(store)], catch_exceptions=True)
        crash = result.exception is not None and not isinstance(result.exception, SystemExit)
        assert not crash and "Traceback" not in result.output, (args, result.output, result.exception)
        return result

    assert run(base, "index", str(docs), "--chunk-size", "32", "--overlap", "4", *model, "--quiet").exit_code == 0
    (docs / "doc003.md").write_text("# Changed\n\nNow about kelp forests and sea otters.")
    (docs / "doc005.md").unlink()
    assert run(base, "index", str(docs), *model, "--quiet").exit_code == 0
    queries = {"dense": "kelp forests and sea otters", "sparse": "kelp otters reton conmar prolis"}

    def answers(store: Path) -> tuple[int, dict]:
        results = {mode: run(store, "search", q, "--mode", mode, "-k", "5", "--json", *model)
                   for mode, q in queries.items()}
        info = run(store, "info", "--json")
        if info.exit_code or any(r.exit_code for r in results.values()):
            return -1, {m: r.output for m, r in results.items()}
        return json.loads(info.stdout)["chunks"], {m: [(h["id"], h["text"]) for h in json.loads(r.stdout)]
                                                   for m, r in results.items()}

    expected = answers(base)
    assert expected[0] > 12 and all(len(ids) == 5 for ids in expected[1].values())

    def clear(result) -> bool:
        out = result.output
        return result.exit_code == 1 and str(tmp_path) in out and (
            ("damaged" in out or "corrupted" in out) and ("--repair" in out or "--recreate" in out))

    outcomes: dict[str, str] = {}
    for kind, rel in _store_file_kinds(base).items():
        for how in ("delete", "truncate", "corrupt"):
            work = tmp_path / f"work-{len(outcomes)}"
            subprocess.run(["cp", "-r", "--sparse=always", str(base), str(work)], check=True)
            if how == "delete":
                (work / rel).unlink()
            elif how == "truncate":
                os.truncate(work / rel, 0)
            else:
                _corrupt(work / rel, seed=len(outcomes))
            # reading: the right answer, or a clear error (after overwritten bytes, or check reports the damage)
            wrong = []
            for mode, q in queries.items():
                r = run(work, "search", q, "--mode", mode, "-k", "5", "--json", *model)
                if not ((r.exit_code == 0 and [(h["id"], h["text"]) for h in json.loads(r.stdout)] == expected[1][mode])
                        or clear(r)):
                    wrong.append((mode, r.output))
            info = run(work, "info", "--json")
            if not ((info.exit_code == 0 and json.loads(info.stdout)["chunks"] == expected[0]) or clear(info)):
                wrong.append(("info", info.output))
            if wrong:
                assert how == "corrupt", (kind, how, wrong)
                checked = run(work, "check", *model)
                assert checked.exit_code == 1 and "damaged" in checked.output, (kind, how, wrong, checked.output)
            # an index run repairs what it can, or stops with a clear error; never "unchanged" on a damaged store
            indexed = run(work, "index", str(docs), *model, "--quiet", "--json")
            assert indexed.exit_code == 0 or clear(indexed), (kind, how, indexed.output)
            if indexed.exit_code == 0 and answers(work) == expected:
                outcomes[f"{how} {kind}"] = "fine or repaired by index"
                continue
            repaired = run(work, "check", "--repair", *model)
            if repaired.exit_code == 0:  # readable chunks re-embedded; files whose chunks were lost: index again
                fixed = run(work, "index", str(docs), *model, "--quiet", "--json")
                assert fixed.exit_code == 0 and answers(work) == expected, (kind, how, repaired.output, fixed.output)
                outcomes[f"{how} {kind}"] = (f"check --repair, then index wrote "
                                             f"{json.loads(fixed.stdout)['chunks_written']} chunks")
            else:
                assert clear(repaired) and "--recreate" in repaired.output, (kind, how, repaired.output)
                rebuilt = run(work, "index", str(docs), "--recreate", "--chunk-size", "32", "--overlap", "4", *model,
                              "--quiet")
                assert rebuilt.exit_code == 0 and answers(work) == expected, (kind, how, rebuilt.output)
                outcomes[f"{how} {kind}"] = "rebuilt with --recreate"
            shutil.rmtree(work)
    assert len(outcomes) >= 60
    print(json.dumps(outcomes, indent=1))
