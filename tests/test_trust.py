"""Trust under real use: files outside the folder never indexed, damaged vectors never shown, searches while a
collection is indexed or served, bounded memory for large files, and the command line's paper cuts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from files import text_pdf, write_corpus, write_topics
from lganna_rag.cli import main
from lganna_rag.index import Index

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "lganna_rag.cli"]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "tests") + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ---------------------------------------------------------------------------------------------- 1. outside files
def test_a_file_swapped_for_a_link_to_outside_while_indexing_is_never_read(mistral, tmp_path, monkeypatch):
    import lganna_rag.sync as sync

    docs = write_topics(tmp_path / "docs")
    (docs / "zzz_last.md").write_text("Harmless notes about tea.")
    secret = tmp_path / "elsewhere" / "creds.txt"
    secret.parent.mkdir()
    secret.write_text("root password: hunter2 for the database server")
    real_load = sync.load_file

    def swap_then_load(ref, *args, **kwargs):  # the hook between discovery (the scan) and the read
        if ref.path.name == "zzz_last.md":
            ref.path.unlink()
            ref.path.symlink_to(secret)
        return real_load(ref, *args, **kwargs)

    monkeypatch.setattr(sync, "load_file", swap_then_load)
    with Index(tmp_path / "store", encoder=mistral) as index:
        report = index.add_files([docs])
        reasons = {s.source: s.reason for s in report.skipped}
        assert reasons["zzz_last.md"].startswith("changed while indexing: it became a symlink")
        assert all("hunter2" not in h.text for h in index.search("root password", k=5, mode="sparse"))
        assert not any(str(secret.parent) in p for p in index.files())


def test_chunks_of_a_file_outside_its_folder_are_reported_and_removed(mistral, tmp_path):
    """Chunks recorded under a folder whose file lies outside it (as an older version could index through a swapped
    link) are reported by check and removed by the next index, --prune or delete of that folder."""
    docs = write_topics(tmp_path / "docs")
    secret = tmp_path / "elsewhere" / "creds.txt"
    secret.parent.mkdir()
    secret.write_text("root password: hunter2")
    stray = {"path": str(secret.resolve()), "root": str(docs.resolve()), "source": "zzz_last.md", "chunk": 0,
             "n_chunks": 1, "start": 0, "end": 22, "file_hash": "0" * 64}
    for how in ("index", "prune", "delete"):
        store = tmp_path / f"store-{how}"
        with Index(store, encoder=mistral) as index:
            index.add_files([docs])
            index.add_texts([secret.read_text()], metadatas=[stray])
            found = index.check()
            assert found["outside_files"] == [str(secret.resolve())] and found["problems"]
            if how == "delete":
                index.delete(paths=[docs])
                assert index.count() == 0
            else:
                report = index.add_files([docs], prune=True if how == "prune" else None)
                assert ("zzz_last.md", "outside the folder it was indexed under") in report.removed
            assert all("hunter2" not in h.text for h in index.search("root password", k=10, mode="sparse"))
            assert index.check()["problems"] == []


# ---------------------------------------------------------------------------------------------- 2. damaged vectors
def test_overwritten_vector_bytes_are_found_by_check_and_never_shown_as_scores(mistral, tmp_path):
    docs = write_corpus(tmp_path / "docs", n_files=6, words=120)
    with Index(tmp_path / "store", encoder=mistral) as index:
        index.add_files([docs], chunk_size=32, overlap=4)
        n = index.count()
        assert index.check()["problems"] == []
    mmap = next((tmp_path / "store" / "default" / "shard").rglob("vector_storage-dense/vectors/chunk_0.mmap"))
    with open(mmap, "r+b") as fh:  # random huge floats over half the stored vectors, as a bad write could leave
        fh.seek(0)
        fh.write((np.random.default_rng(0).standard_normal(64 * n // 2) * 3.0e37).astype(np.float32).tobytes())
    runner = CliRunner()
    checked = runner.invoke(main, ["check", "--path", str(tmp_path / "store")])
    assert checked.exit_code == 1 and "damaged vectors" in checked.output, checked.output
    searched = runner.invoke(main, ["search", "anything at all", "--dense", "--path", str(tmp_path / "store"),
                                    "--model", str(mistral.name)])
    assert searched.exit_code == 1 and "damaged" in searched.output and "e+37" not in searched.output, searched.output
    indexed = runner.invoke(main, ["index", str(docs), "--path", str(tmp_path / "store"), "--model", str(mistral.name)])
    assert indexed.exit_code == 1 and "damaged vectors" in indexed.output  # the pre-check refuses to build on it
    repaired = runner.invoke(main, ["check", "--repair", "--path", str(tmp_path / "store"), "--model", str(mistral.name)])
    assert repaired.exit_code == 0, repaired.output
    with Index(tmp_path / "store", encoder=mistral) as index:
        hits = index.search("anything at all", k=5, mode="dense")
        assert len(hits) == 5 and all(-1 <= h.score <= 1 for h in hits)


# ---------------------------------------------------------------------------------------------- 4. concurrent use
def _start(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_server(proc: subprocess.Popen, url: str) -> None:
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not start")


def test_searches_keep_answering_while_a_served_collection_is_indexed(mistral_dir, tmp_path):
    """A real server answers searches at a steady rate while real `lganna-rag index` processes add and remove
    files of the collection it serves; no search fails and the new files become searchable, through the server and
    through a local `search` run meanwhile."""
    import httpx

    docs = write_topics(tmp_path / "docs")
    store = tmp_path / "store"
    model = ["--model", str(mistral_dir)]
    first = subprocess.run([*CLI, "index", str(docs), "--path", str(store), *model, "--quiet"], env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start(["serve", "--collection", "default", "--path", str(store), "--port", str(port)])
    try:
        _wait_for_server(server, url)
        results: list[tuple[float, int, list[str]]] = []
        stop = threading.Event()

        def ask() -> None:
            with httpx.Client(timeout=60) as client:
                while not stop.is_set():
                    r = client.post(url + "/v1/search", json={"query": "glacier moraine", "k": 3, "mode": "sparse"})
                    sources = [h["source"] for h in r.json().get("data", [])] if r.status_code == 200 else []
                    results.append((time.monotonic(), r.status_code, sources))
                    time.sleep(0.05)

        asker = threading.Thread(target=ask)
        asker.start()
        time.sleep(1.0)
        (docs / "glaciers.md").write_text("# Glaciers\n\nA moraine is rock debris left by a glacier. " * 20)
        for i in range(12):
            (docs / f"filler{i:02d}.md").write_text(f"# Filler {i}\n\n" + "Plain notes about gardening. " * 80)
        (docs / "chess.txt").unlink()
        indexed = subprocess.run([*CLI, "index", str(docs), "--path", str(store), *model, "--batch-size", "4",
                                  "--json"], env=_env(), capture_output=True, text=True, timeout=600)
        local = subprocess.run([*CLI, "search", "glacier moraine", "--sparse", "--path", str(store), "--json"],
                               env=_env(), capture_output=True, text=True, timeout=300)
        time.sleep(1.0)
        stop.set()
        asker.join()
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=60)
    assert indexed.returncode == 0, indexed.stderr
    report = json.loads(indexed.stdout)
    assert report["files_indexed"] == 13 and report["files_pruned"] == 1
    assert server.returncode == 0, err
    assert "queries with the base model (no adapter)" in err  # the start line says which adapter search uses
    assert results and all(code == 200 for _, code, _ in results), [r for r in results if r[1] != 200][:3]
    seconds = results[-1][0] - results[0][0]
    assert len(results) / seconds > 1.0  # a steady rate, not stalled for the whole index run
    assert "glaciers.md" in results[-1][2]  # the new file is searchable through the server
    assert local.returncode == 0 and json.loads(local.stdout)[0]["source"] == "glaciers.md", local.stderr
    print(f"{len(results)} searches in {seconds:.1f} s during and around the index run "
          f"({len(results) / seconds:.1f}/s), none failed")


def test_a_write_run_waits_for_nobody_and_tells_what_holds_the_store(mistral, tmp_path):
    docs = write_topics(tmp_path / "docs")
    holder = Index(tmp_path / "store", encoder=mistral)
    holder.add_files([docs])
    holder.backend.lock()  # a write run in progress elsewhere
    result = CliRunner().invoke(main, ["index", str(docs), "--path", str(tmp_path / "store"), "--model", mistral.name])
    assert result.exit_code == 1 and "is writing it" in result.output and "Traceback" not in result.output
    searched = CliRunner().invoke(main, ["search", "lava", "--sparse", "--path", str(tmp_path / "store")])
    assert searched.exit_code == 0 and "volcanoes.md" in searched.output  # searches are not refused meanwhile
    holder.close()


# ---------------------------------------------------------------------------------------------- 7. memory
def test_a_large_text_file_is_indexed_in_bounded_memory(mistral_dir, tmp_path):
    """A 60 MB text file with the limit raised: read, hashed and chunked in pieces. The process stays under 1.5 GB,
    torch and the model included (0.4-0.6 GB on 2 threads here; CI's larger machine measured 1.2 GB with a thread per
    core, hence 2 threads); reading the file whole and tokenizing it at once took several GB. Stopped after a while,
    it resumes."""
    big = tmp_path / "docs" / "big.txt"
    big.parent.mkdir()
    line = "Glaciers carve valleys; rivers carry sediment to the sea and the tide moves it along the coast.\n"
    with open(big, "w") as fh:
        for i in range(60 * 1024 * 1024 // len(line)):
            fh.write(line if i % 40 else "\n")
    proc = _start(["index", str(big.parent), "--path", str(tmp_path / "store"), "--model", str(mistral_dir),
                   "--max-file-mb", "0", "--batch-size", "64", "--threads", "2"])
    peak, started = 0, time.monotonic()
    try:
        while time.monotonic() - started < 45 and proc.poll() is None:
            with open(f"/proc/{proc.pid}/status") as fh:
                rss = next(int(x.split()[1]) for x in fh if x.startswith("VmRSS:"))
            peak = max(peak, rss)
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), err
    assert 0 < peak < 1536 * 1024, f"peak RSS {peak / 1024:.0f} MB"
    print(f"peak RSS {peak / 1024:.0f} MB while indexing a 60 MB file")


def test_max_file_mb_zero_turns_the_limit_off(mistral_dir, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("word " * 5000)
    ok = CliRunner().invoke(main, ["index", str(tmp_path / "docs"), "--path", str(tmp_path / "s"), "--model",
                                   str(mistral_dir), "--max-file-mb", "0", "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["files_indexed"] == 1, ok.output


# ---------------------------------------------------------------------------------------------- 9. private clone
def test_other_user_blocks_work_when_the_virtualenv_is_private():
    """The tests that run a part as another user pass in a clone inside a private folder: what that user's code
    imports lazily (pypdf reads ``pypdf.filters`` inside ``PdfReader``) is imported before switching. Run in a
    fresh process (nothing of pypdf imported yet) with the pypdf package unreadable to the other user."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a block as another user")
    import pypdf

    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="lganna-other-user-"))  # /tmp: the other user can reach it
    folder.chmod(0o755)
    (folder / "a.pdf").write_bytes(text_pdf("Glaciers carve U-shaped valleys"))
    script = (f"from pathlib import Path\nfrom files import as_other_user\nfrom lganna_rag.ingest import FileRef, "
              f"load_file\nfolder = Path({str(folder)!r})\nwith as_other_user():\n    loaded = load_file(FileRef("
              f"folder / 'a.pdf', folder, 'a.pdf'))\nprint(loaded.text)\n")
    package = Path(pypdf.__file__).parent
    mode = package.stat().st_mode
    package.chmod(0o700)  # nobody cannot read the package (as in a clone under a private folder)
    try:
        run = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=120)
    finally:
        package.chmod(mode)
        (folder / "a.pdf").unlink()
        folder.rmdir()
    assert run.returncode == 0 and "Glaciers" in run.stdout, run.stderr[-2000:]


# ---------------------------------------------------------------------------------------------- 10. paper cuts
def test_embed_names_the_line_that_is_not_utf8(mistral_dir):
    result = CliRunner().invoke(main, ["embed", "--model", str(mistral_dir)], input=b"hello\n\ncaf\xe9\n")
    assert result.exit_code == 2 and "stdin line 3 is not valid UTF-8: byte 0xE9" in result.output, result.output


def test_a_query_that_is_not_utf8_gets_one_message_whatever_the_mode(mistral, tmp_path):
    docs = write_topics(tmp_path / "docs")
    with Index(tmp_path / "store", encoder=mistral) as index:
        index.add_files([docs])
    outputs = set()
    for mode in ("--dense", "--sparse", "--hybrid"):
        r = CliRunner().invoke(main, ["search", "caf\udce9", mode, "--path", str(tmp_path / "store")])
        assert r.exit_code == 2 and "QUERY is not valid UTF-8: byte 0xE9 at character 4" in r.output, r.output
        assert "encode(" not in r.output  # no Python code in a command-line message
        outputs.add(r.output)
    assert len(outputs) == 1


def test_summaries_off_a_terminal_are_not_wrapped_and_names_are_printable(mistral_dir, tmp_path):
    deep = tmp_path / ("a-rather-long-folder-name-" * 3) / "docs"
    deep.mkdir(parents=True)
    (deep / "line\nbreak.txt").write_bytes(b"\x00\x01 binary")
    (deep / "ok.md").write_text("Tea is brewed with water below boiling.")
    result = CliRunner().invoke(main, ["index", str(deep), "--path", str(tmp_path / "s"), "--model", str(mistral_dir)])
    assert result.exit_code == 0, result.output
    skipped = next(line for line in result.output.splitlines() if "skipped" in line and "binary" in line)
    assert "line\\nbreak.txt" in skipped  # the newline in the name is shown escaped, on the same line
    assert any(len(line) > 100 for line in result.output.splitlines())  # one summary line, not wrapped at 80


def test_ctrl_c_stops_within_an_encoder_batch(mistral, tmp_path):
    """A stop asked while a 256-chunk step is being encoded takes effect after the current encoder batch, not after
    the whole step (Ctrl-C waited up to a whole step before)."""
    docs = write_corpus(tmp_path / "docs", n_files=1, words=6000)
    with Index(tmp_path / "store", encoder=mistral, batch_size=8) as index:
        report = index.add_files([docs], chunk_size=16, overlap=2, should_stop=lambda: True)
        assert report.interrupted and report.chunks_written == 0  # stopped inside the first step
        assert index.add_files([docs], chunk_size=16, overlap=2).chunks_written > 256  # the next run does it all


def test_a_nul_byte_late_in_a_file_makes_it_binary(tmp_path):
    from lganna_rag.ingest import FileRef, Skip, load_file

    path = tmp_path / "late.txt"
    path.write_bytes(b"plain text " * 1000 + b"\x00 and more")
    result = load_file(FileRef(path, tmp_path, "late.txt"))
    assert isinstance(result, Skip) and result.reason == "binary file"


def test_hybrid_ties_come_in_one_order_whenever_the_shard_was_opened(mistral, tmp_path):
    """RRF gives equal scores to chunks ranked (i, j) and (j, i): the engine returned them in an order that changed
    when the shard was reopened, so the same search could rank differently; ties are now ordered by id."""
    docs = write_corpus(tmp_path / "docs", n_files=8, words=300)
    with Index(tmp_path / "store", encoder=mistral) as index:
        index.add_files([docs], chunk_size=24, overlap=2)
        queries = ["trapia subsul conmar", "exdor prosul subgen", "inquo inton travek", "redor provek prodor"]
        vectors = mistral.encode_queries(queries)
        first = [[(h.id, h.score) for h in index.search_by_vector(v, 10, text=q)] for q, v in zip(queries, vectors)]
        for _ in range(3):
            index.backend.close()  # reopened by the next search
            again = [[(h.id, h.score) for h in index.search_by_vector(v, 10, text=q)] for q, v in zip(queries, vectors)]
            assert again == first
        for hits in first:
            assert all((-a[1], a[0]) <= (-b[1], b[0]) for a, b in zip(hits, hits[1:]))  # ties by id
