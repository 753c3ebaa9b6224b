"""The Qdrant index: retrieval quality on the example folder, incremental indexing, bad input, stores."""

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from files import as_other_user, assert_matches_clean_run, text_pdf, write_corpus, write_topics
from files import one_thread  # noqa: F401  (autouse: one torch thread)
from lganna_rag.index import CollectionNotFoundError, Index, ModelMismatchError, model_metadata
from lganna_rag.stores import IndexStoreError

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "docs"

#: A question per example file, worded differently from the file itself.
QUESTIONS = {
    "how hot should the water be for green tea?": "tea-brewing.html",
    "my pods get restarted whenever the database goes down": "kubernetes-probes.md",
    "what do bees do during the cold months": "honeybee-colonies.md",
    "the inverter shows an isolation fault": "solar-panels.txt",
    "combine several commits into one before merging": "git-rebase.rst",
    "is the JR pass worth buying for a Tokyo Osaka round trip": "travel/japan-rail-pass.md",
    "how often should I feed my starter": "sourdough.md",
}
#: Keyword queries sharing words with their file (what BM25 alone can find).
KEYWORDS = {
    "green tea water temperature": "tea-brewing.html",
    "liveness probe restarts container": "kubernetes-probes.md",
    "honeybee queen swarm": "honeybee-colonies.md",
    "inverter isolation fault": "solar-panels.txt",
    "interactive rebase squash commits": "git-rebase.rst",
    "Japan Rail Pass Shinkansen": "travel/japan-rail-pass.md",
    "sourdough starter hydration": "sourdough.md",
}


@pytest.fixture(scope="module")
def example_index(minilm, tmp_path_factory):
    docs = tmp_path_factory.mktemp("examples") / "docs"
    shutil.copytree(EXAMPLES, docs)
    index = Index(tmp_path_factory.mktemp("store"), encoder=minilm)
    report = index.add_files([docs])
    assert report.failed == [] and report.skipped == [] and len(report.indexed) == 7
    yield index
    index.close()


# ---------------------------------------------------------------------------------------------- retrieval
@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_each_question_finds_its_file(example_index, mode):
    for question, source in {**KEYWORDS, **(QUESTIONS if mode != "sparse" else {})}.items():
        hits = example_index.search(question, k=3, mode=mode)
        assert hits[0].source == source, (mode, question, [(h.source, h.score) for h in hits])
        assert hits[0].text and hits[0].text in (EXAMPLES / source).read_text() or source.endswith(".html")


def test_filters_metadata_and_payload_indexes(example_index, minilm):
    hits = example_index.search("water temperature", k=5, where={"source": "sourdough.md"})
    assert hits and {h.source for h in hits} == {"sourdough.md"}
    both = example_index.search("water", k=10, where={"source": ["sourdough.md", "tea-brewing.html"]}, mode="hybrid")
    assert {h.source for h in both} == {"sourdough.md", "tea-brewing.html"}
    info = example_index.info()
    assert info["model"] == model_metadata(minilm) and info["files"] == 7 and info["chunks"] == example_index.count()
    assert info["chunking"] == {"size": 252, "overlap": 32, "model_limit": 252} and info["bm25"]["k"] == 1.2
    assert set(example_index.backend._open().info().payload_schema) == {"source", "root", "path"}
    hit = example_index.search("bees swarm", k=1)[0]
    text = (Path(hit.payload["root"]) / hit.source).read_text()
    assert text[hit.start:hit.end] == hit.text  # character span into the original file


def test_hybrid_is_the_default_search(example_index):
    """Index.search ranks by dense + BM25 (RRF) unless told otherwise; its scores are RRF scores, not cosines."""
    question = "how hot should the water be for green tea?"
    default = example_index.search(question, k=5)
    hybrid, dense = example_index.search(question, k=5, mode="hybrid"), example_index.search(question, k=5, mode="dense")
    assert [(h.id, h.score) for h in default] == [(h.id, h.score) for h in hybrid]
    assert [h.score for h in default] != [h.score for h in dense]
    # reciprocal rank fusion (Qdrant: 1/(60 + rank), rank from 0): the file first in both rankings scores 2/60
    assert default[0].source == dense[0].source == "tea-brewing.html" and default[0].score == pytest.approx(2 / 60)
    assert all(0 < h.score <= 2 / 60 + 1e-6 for h in default)  # (float32 scores)


def test_search_rejects_bad_arguments(example_index):
    with pytest.raises(ValueError, match="non-empty"):
        example_index.search("   ")
    with pytest.raises(ValueError, match="positive integer"):
        example_index.search("bees", k=0)
    with pytest.raises(ValueError, match="mode must be"):
        example_index.search("bees", mode="fuzzy")
    assert example_index.search("the and of", mode="sparse") == []  # stopwords only: nothing to match
    assert example_index.search("the and of", mode="hybrid")  # falls back to the dense ranking


# ---------------------------------------------------------------------------------------------- incremental
def test_incremental_runs_converge_to_a_clean_run(mistral, tmp_path):
    docs = write_corpus(tmp_path / "docs", n_files=6, words=150)
    index = Index(tmp_path / "store", encoder=mistral)
    first = index.add_files([docs], chunk_size=32, overlap=4)
    assert len(first.indexed) == 6 and first.chunks_written == index.count() > 12
    again = index.add_files([docs])  # chunking settings come from the collection
    assert again.unchanged == sorted(again.unchanged) and len(again.unchanged) == 6 and again.chunks_written == 0

    with open(docs / "doc001.md", "a") as fh:  # appended text: the earlier chunks keep their ids
        fh.write("\n\nA brand new closing paragraph about tides.")
    (docs / "doc002.md").unlink()
    (docs / "new.md").write_text("# New\n\nA new file about tidal energy.")
    kept = index.add_files([docs], prune=False)
    assert kept.indexed == ["doc001.md", "new.md"] and kept.pruned == [] and kept.chunks_reused > 0
    assert index.count(where={"source": "doc002.md"}) > 0
    changed = index.add_files([docs])
    assert changed.indexed == [] and changed.pruned == ["doc002.md"]
    assert index.count(where={"source": "doc002.md"}) == 0
    assert_matches_clean_run(index, docs, mistral, tmp_path / "clean", chunk_size=32, overlap=4)


def test_stopped_run_resumes_to_the_clean_result(mistral, tmp_path, monkeypatch):
    import lganna_rag.sync as sync_module

    monkeypatch.setattr(sync_module, "WRITE_BATCH", 16)
    docs = write_corpus(tmp_path / "docs", n_files=8, words=180)
    index = Index(tmp_path / "store", encoder=mistral)
    calls = []
    report = index.add_files([docs], chunk_size=24, overlap=4, should_stop=lambda: calls.append(1) or len(calls) > 3)
    assert report.interrupted and 0 < index.count()
    partial = index.count()
    resumed = index.add_files([docs])
    # nothing is encoded twice: complete files are unchanged, the partly written one is finished
    assert not resumed.interrupted and resumed.unchanged and resumed.chunks_reused > 0
    assert resumed.chunks_written == index.count() - partial
    assert_matches_clean_run(index, docs, mistral, tmp_path / "clean", chunk_size=24, overlap=4)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_are_reported_and_nothing_is_lost(mistral):
    import pypdf  # noqa: F401  imported as ourselves: the other user may not be able to read site-packages
    import qdrant_edge  # noqa: F401

    base = Path(tempfile.mkdtemp(prefix="lganna-bad-"))
    base.chmod(0o755)  # so the unprivileged user (when we are root) can read the folder
    docs = write_topics(base / "docs")
    (docs / "manual.pdf").write_bytes(text_pdf("Glaciers carve U-shaped valleys"))
    (docs / "binary.txt").write_bytes(b"\x00\x01\x02\x03 not text")
    (docs / "latin1.txt").write_bytes("Crème brûlée has a burnt sugar crust.".encode("latin-1"))
    (docs / "empty.md").write_text("")
    (docs / "huge.md").write_text("lava " * 3000)
    (docs / "secret.md").write_text("The vault code is written on a sticky note.")
    (docs / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    (docs / "loop").symlink_to(docs)
    (docs / "etc").symlink_to("/etc")
    store = base / "store"
    store.mkdir(mode=0o777)
    store.chmod(0o777)
    try:
        with as_other_user():
            index = Index(store, encoder=mistral)
            first = index.add_files([docs], max_file_mb=0.01, chunk_size=64)
        assert sorted(first.indexed) == ["chess.txt", "espresso.md", "latin1.txt", "manual.pdf", "secret.md",
                                         "volcanoes.md"]
        reasons = {s.source: s.reason for s in first.skipped}
        assert reasons["binary.txt"] == "binary file" and reasons["empty.md"] == "empty file"
        assert reasons["huge.md"].startswith("larger than --max-file-mb 0.01")
        assert "symlink loop" in reasons["loop/"] and "outside the indexed root" in reasons["etc"]
        assert reasons["photo.jpg"].startswith("unsupported file type (.jpg)")
        assert first.warnings == [("latin1.txt", "invalid UTF-8 (first bad byte at offset 2); 3 character(s) "
                                                 "replaced with U+FFFD")]
        assert index.search("glaciers valleys", k=1, mode="sparse")[0].source == "manual.pdf"
        secret_chunks = index.count(where={"source": "secret.md"})
        (docs / "secret.md").chmod(0o000)
        with as_other_user():
            second = index.add_files([docs], max_file_mb=0.01)
            assert [(s.source, s.reason) for s in second.failed] == [("secret.md", "cannot read: Permission denied")]
            assert index.count(where={"source": "secret.md"}) == secret_chunks  # a failure is not a deletion
            index.close()
    finally:
        (docs / "secret.md").chmod(0o644)
        shutil.rmtree(base, ignore_errors=True)


def test_missing_path_and_empty_folder(mistral, tmp_path):
    index = Index(tmp_path / "store", encoder=mistral)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        index.add_files([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    report = index.add_files([tmp_path / "empty"])
    assert report.indexed == [] and report.skipped == [] and not index.exists and index.count() == 0
    with pytest.raises(CollectionNotFoundError, match="index something first"):
        index.search("anything")


# ---------------------------------------------------------------------------------------------- stores
def test_model_and_chunking_mismatch_are_clear_errors(mistral, minilm, tmp_path):
    docs = write_topics(tmp_path / "docs")
    with Index(tmp_path / "store", encoder=mistral) as index:
        index.add_files([docs], chunk_size=64)
    with pytest.raises(ModelMismatchError) as err:
        Index(tmp_path / "store", encoder=minilm)
    message = str(err.value)
    assert "holds 64-d vectors" in message and "makes 384-d vectors from model 'minilm'" in message
    assert f"--model {mistral.name}" in message and "--recreate" in message
    with Index(tmp_path / "store", encoder=mistral) as index:
        with pytest.raises(IndexStoreError, match="built with chunk size 64"):
            index.add_files([docs], chunk_size=32)
        assert index.encoder is mistral
    with Index(tmp_path / "store", encoder=minilm, recreate=True) as index:  # --recreate starts over
        assert not index.exists
        index.add_files([docs])
        assert index.metadata["model"]["name"] == "minilm"


def test_corrupted_store_is_reported_and_recreate_fixes_it(mistral, tmp_path):
    docs = write_topics(tmp_path / "docs")
    with Index(tmp_path / "store", encoder=mistral) as index:
        index.add_files([docs])
    meta = tmp_path / "store" / "default" / "collection.json"
    good = meta.read_text()
    meta.write_text("{ not json")
    with pytest.raises(IndexStoreError, match=r"corrupted: collection.json is unreadable .*--recreate"):
        Index(tmp_path / "store", encoder=mistral)
    meta.write_text(good)
    (tmp_path / "store" / "default" / "shard" / "edge_config.json").write_text("garbage")
    with pytest.raises(IndexStoreError, match="corrupted or unreadable .*--recreate"):
        Index(tmp_path / "store", encoder=mistral).count()
    with Index(tmp_path / "store", encoder=mistral, recreate=True) as index:
        assert index.add_files([docs]).indexed and index.count() > 0
        n = index.count()
    # a shard that lost its points after a complete run is damaged, not empty
    shutil.rmtree(tmp_path / "store" / "default" / "shard")
    with pytest.raises(IndexStoreError, match=r"damaged: it counts 0 chunks where \d+ were recorded .*check --repair"):
        Index(tmp_path / "store", encoder=mistral).count()
    # a run killed between writing collection.json (no count recorded yet) and creating the shard: the
    # next run creates it
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "points": None}))
    with Index(tmp_path / "store", encoder=mistral) as index:
        assert len(index.add_files([docs]).indexed) == 3 and index.count() == n
        assert set(index.backend._open().info().payload_schema) == {"source", "root", "path"}
    meta.unlink()  # a shard without its description is not guessed at
    with pytest.raises(IndexStoreError, match="has a shard but no collection.json"):
        Index(tmp_path / "store", encoder=mistral)


def test_two_users_of_one_store_take_turns_and_two_writers_do_not(mistral, tmp_path):
    docs = write_topics(tmp_path / "docs")
    first = Index(tmp_path / "store", encoder=mistral)
    first.add_files([docs])
    n = first.count()  # first holds the shard open now
    second = Index(tmp_path / "store", encoder=mistral, wait=20)
    assert second.count() == n > 0  # second asks, first hands it over (no "in use" error)
    assert first.search("lava", k=1, mode="sparse")  # and gets it back when it needs it
    first.backend.lock()  # a write run in progress (an index, delete or repair)
    with pytest.raises(IndexStoreError, match="in use by another process: .* is writing it"):
        second.add_files([docs])
    assert second.search("lava", k=1, mode="sparse")  # searches go on meanwhile
    first.close()  # releases the writer lock
    assert second.add_files([docs]).unchanged
    second.close()


def test_add_texts_ids_delete_and_count(mistral, tmp_path):
    with Index(tmp_path / "store", encoder=mistral) as index:
        ids = index.add_texts(["alpha text", "beta text", "gamma text"], metadatas=[{"source": "a"}, {"source": "b"}, {}],
                              ids=["doc-1", 7, "0b5e2a4c-8a43-4d7e-9a53-9b7a3e4c1f00"])
        assert ids[1] == "00000000-0000-0000-0000-000000000007" and ids[2] == "0b5e2a4c-8a43-4d7e-9a53-9b7a3e4c1f00"
        assert index.count() == 3
        hit = index.search("alpha text", k=1, mode="sparse")[0]
        assert hit.payload["doc_id"] == "doc-1" and hit.source == "a"
        assert index.add_texts(["delta", "delta"]) == index.add_texts(["delta"]) * 2 and index.count() == 4
        assert index.delete(ids=["doc-1"]) == 1
        assert index.delete(where={"source": "b"}) == 1
        assert index.count() == 2
        with pytest.raises(ValueError, match="exactly one"):
            index.delete()
        with pytest.raises(TypeError, match=r"texts\[1\] is int"):
            index.add_texts(["ok", 3])
        vec = mistral.encode_documents(["ready-made vector"])
        (pid,) = index.add_texts(["ready-made vector"], vectors=vec)
        hit = index.search_by_vector(vec[0], k=1)[0]
        assert hit.id == pid and hit.score == pytest.approx(1.0, abs=1e-5)
        with pytest.raises(ValueError, match=r"vectors have shape \(1, 3\); expected \(1, 64\)"):
            index.add_texts(["x"], vectors=[[0.1, 0.2, 0.3]])


def test_delete_by_path(mistral, tmp_path):
    docs = write_topics(tmp_path / "docs")
    (docs / "sub").mkdir()
    (docs / "sub" / "x.md").write_text("# X\n\nA note about moss.")
    with Index(tmp_path / "store", encoder=mistral) as index:
        index.add_files([docs])
        assert set(index.files()) == {f"{docs}/chess.txt", f"{docs}/espresso.md", f"{docs}/volcanoes.md", f"{docs}/sub/x.md"}
        assert index.delete(paths=[docs / "sub"]) == 1
        assert index.delete(paths=[docs / "chess.txt"]) == 1
        assert set(index.files()) == {f"{docs}/espresso.md", f"{docs}/volcanoes.md"}


def test_qdrant_client_backend_local_mode(minilm, mistral, tmp_path):
    from qdrant_client import QdrantClient

    docs = tmp_path / "docs"
    shutil.copytree(EXAMPLES, docs)
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    index = Index(client=client, collection="docs", encoder=minilm)
    report = index.add_files([docs])
    assert len(report.indexed) == 7 and index.count() == report.chunks_written
    for mode in ("dense", "hybrid"):
        assert index.search("how hot should the water be for green tea?", k=2, mode=mode)[0].source == "tea-brewing.html"
    assert index.add_files([docs]).chunks_written == 0  # incremental on the client backend too
    assert index.info()["collections"] == ["docs"]
    with pytest.raises(ModelMismatchError, match="384-d vectors from model 'minilm'"):
        Index(client=client, collection="docs", encoder=mistral)
    client.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_qdrant_url_fails_fast_with_a_clear_error():
    started = time.perf_counter()
    with pytest.raises(IndexStoreError, match=r"Qdrant at http://127.0.0.1:\d+ did not answer .*--url"):
        Index(url=f"http://127.0.0.1:{_closed_port()}", timeout=2)
    assert time.perf_counter() - started < 5
    # a server that accepts the connection but never answers: the timeout applies
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    stop = threading.Event()
    try:
        started = time.perf_counter()
        with pytest.raises(IndexStoreError, match="did not answer within 1 s"):
            Index(url=f"http://127.0.0.1:{server.getsockname()[1]}", timeout=1)
        assert time.perf_counter() - started < 8
    finally:
        stop.set()
        server.close()


# ---------------------------------------------------------------------------------------------- issue 14
def _texts_of(index, source_suffix):
    return sorted(p["text"] for _, p in index.backend.scroll(["text", "path", "root", "source"])
                  if (p.get("path") or f"{p['root']}/{p['source']}").endswith(source_suffix))


def test_a_file_has_one_identity_whatever_root_reached_it(mistral, tmp_path):
    docs = write_corpus(tmp_path / "docs" / "g0", n_files=3, words=120).parent
    write_corpus(docs / "g1", n_files=2, words=120, seed=1)
    target = docs / "g0" / "doc001.md"
    index = Index(tmp_path / "store", encoder=mistral)
    index.add_files([docs], chunk_size=32, overlap=4)
    n_before = index.count()
    old_chunks = index.count(where={"path": str(target)})
    assert old_chunks > 1 and index.count(where={"source": "g0/doc001.md"}) == old_chunks

    target.write_text("# Replaced\n\nThe whole file now talks about lighthouse keepers only.")
    single = index.add_files([target])  # the file on its own: its old chunks are replaced
    assert single.indexed == ["g0/doc001.md"] and single.chunks_deleted == old_chunks
    assert _texts_of(index, "g0/doc001.md") == ["# Replaced\n\nThe whole file now talks about lighthouse keepers only."]
    assert index.count(where={"source": "g0/doc001.md"}) == 1  # keeps its place under docs/ (filters still work)
    assert index.search("lighthouse keepers", k=3, mode="sparse")[0].source == "g0/doc001.md"
    assert index.count() == n_before - old_chunks + 1

    target.write_text("# Again\n\nNow about tidal bores in estuaries.")
    sub = index.add_files([docs / "g0"])  # a subfolder: same identity, no duplicates
    assert sub.indexed == ["g0/doc001.md"] and sub.chunks_deleted == 1 and len(sub.unchanged) == 2 and sub.pruned == []
    assert _texts_of(index, "g0/doc001.md") == ["# Again\n\nNow about tidal bores in estuaries."]
    glob = index.add_files([str(docs / "g*" / "*.md")])
    assert glob.indexed == [] and glob.chunks_written == 0 and glob.chunks_deleted == 0
    whole = index.add_files([docs])  # back to the folder: placement updated, nothing re-encoded or removed
    assert whole.chunks_written == 0 and whole.chunks_deleted == 0 and whole.pruned == []
    assert index.count(where={"source": "g0/doc001.md"}) == 1
    assert_matches_clean_run(index, docs, mistral, tmp_path / "clean", chunk_size=32, overlap=4)


def test_chunks_recorded_by_root_and_source_are_migrated(mistral, tmp_path):
    """Stores written before files had one identity have no ``path``: their chunks are found and replaced."""
    import qdrant_edge as qe

    from files import snapshot

    docs = write_corpus(tmp_path / "docs" / "g0", n_files=3, words=120).parent
    index = Index(tmp_path / "store", encoder=mistral)
    index.add_files([docs], chunk_size=32, overlap=4)
    shard = index.backend._open()
    for pid, (payload, _) in snapshot(index).items():  # rewrite as the old scheme recorded them
        shard.update(qe.UpdateOperation.delete_payload([pid], ["path"]))
    assert index.count(where={"path": str(docs / "g0" / "doc002.md")}) == 0
    target = docs / "g0" / "doc002.md"
    target.write_text("# New\n\nOnly about kelp forests now.")
    report = index.add_files([target])
    assert report.indexed == ["g0/doc002.md"] and report.chunks_deleted > 0
    assert _texts_of(index, "g0/doc002.md") == ["# New\n\nOnly about kelp forests now."]
    migrate = index.add_files([docs])  # the others get their path recorded, nothing re-encoded
    assert migrate.chunks_written == 0 and migrate.chunks_deleted == 0
    assert index.count(where={"path": [str(p) for p in (docs / "g0").iterdir()]}) == index.count()
    assert_matches_clean_run(index, docs, mistral, tmp_path / "clean", chunk_size=32, overlap=4)


def test_unreadable_subfolder_keeps_its_chunks(mistral):
    import qdrant_edge  # noqa: F401  imported as ourselves

    base = Path(tempfile.mkdtemp(prefix="lganna-subdir-"))
    base.chmod(0o755)
    docs = write_corpus(base / "docs" / "d6", n_files=4, words=80).parent
    write_topics(docs)
    store = base / "store"
    store.mkdir(mode=0o777)
    store.chmod(0o777)
    try:
        with as_other_user():
            index = Index(store, encoder=mistral)
            index.add_files([docs], chunk_size=32, overlap=4)
            n = index.count()
            d6 = index.count(where={"source": [f"d6/doc00{i}.md" for i in range(4)]})
        assert d6 > 4
        (docs / "d6").chmod(0o000)
        with as_other_user():
            report = index.add_files([docs])
            assert [(s.source, s.reason) for s in report.failed] == [("d6/", "folder not readable: Permission denied")]
            assert report.pruned == [] and report.chunks_deleted == 0 and index.count() == n
            index.close()
    finally:
        (docs / "d6").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_files_left_out_by_a_filter_are_kept_not_pruned(mistral, tmp_path):
    docs = write_topics(tmp_path / "docs")
    index = Index(tmp_path / "store", encoder=mistral)
    index.add_files([docs])
    n = index.count()
    only_txt = index.add_files([docs], include=["*.txt"])  # the .md files still exist: kept, and said so
    assert only_txt.unchanged == ["chess.txt"] and only_txt.pruned == [] and index.count() == n
    assert sorted(only_txt.kept) == ["espresso.md", "volcanoes.md"]
    excluded = index.add_files([docs], exclude=["volcanoes.md"])
    assert excluded.pruned == [] and excluded.kept == ["volcanoes.md"] and index.count() == n
    (docs / "espresso.md").unlink()  # gone from disk: removed even by a filtered run, with the reason
    gone = index.add_files([docs], include=["*.txt"])
    assert gone.removed == [("espresso.md", "no longer exists")] and gone.kept == ["volcanoes.md"]
    forced = index.add_files([docs], include=["*.txt"], prune=True)  # explicit --prune removes the rest
    assert forced.pruned == ["volcanoes.md"] and "--prune" in forced.removed[0][1]
    assert index.count() == index.count(where={"source": "chess.txt"}) > 0
    (docs / "chess.txt").unlink()
    assert index.add_files([docs], prune=False).pruned == [] and index.count() > 0


def test_non_utf8_file_name_is_indexed_and_does_not_stop_the_run(mistral, tmp_path):
    docs = write_topics(Path(os.fsdecode(bytes(tmp_path) + b"/d\xe9j\xe0")))  # the folder's name is not UTF-8 either
    bad = Path(os.fsdecode(bytes(docs) + b"/b\xff.md"))
    bad.write_text("# Fjords\n\nGlaciers carved the Norwegian fjords.")
    index = Index(tmp_path / "store", encoder=mistral)
    report = index.add_files([docs])
    assert sorted(report.indexed) == ["b\\xff.md", "chess.txt", "espresso.md", "volcanoes.md"] and not report.failed
    assert index.search("Norwegian fjords glaciers", k=1, mode="sparse")[0].source == "b\\xff.md"
    again = index.add_files([docs])
    assert len(again.unchanged) == 4 and again.chunks_written == 0 and again.pruned == []
    bad.unlink()
    assert index.add_files([docs]).pruned == ["b\\xff.md"]


def test_corruption_found_by_index_is_repaired_or_reported(mistral, tmp_path):
    import qdrant_edge as qe

    docs = write_corpus(tmp_path / "docs", n_files=5, words=120)
    index = Index(tmp_path / "store", encoder=mistral)
    index.add_files([docs], chunk_size=32, overlap=4)
    n = index.count()
    shard = index.backend._open()
    victim = next(pid for pid, p in index.backend.scroll(["source"]) if p["source"] == "doc003.md")
    shard.update(qe.UpdateOperation.clear_payload([victim]))  # a point that lost its payload (a ghost)
    with pytest.raises(IndexStoreError, match=r"damaged: chunks without their payload .*check --repair"):
        index.search("anything", k=n)  # never a hit without text
    report = index.add_files([docs])
    assert report.repairs == ["deleted 1 chunks whose payload was lost; their files are re-indexed"]
    assert report.indexed == ["doc003.md"] and report.chunks_written == 1 and index.count() == n
    assert index.check() == {"chunks": n, "files": 5, "problems": [], "incomplete_files": [], "repaired": False,
                             "lost": 0, "outside_files": []}
    assert_matches_clean_run(index, docs, mistral, tmp_path / "clean", chunk_size=32, overlap=4)


def test_unknown_filter_key_lists_the_payload_keys(example_index):
    with pytest.raises(ValueError, match=r"unknown filter key 'sauce': no chunk has it; the chunks' payload keys are "
                                         r"chunk, end, file_hash, n_chunks, path, root, source, start, text"):
        example_index.search("water", where={"sauce": "tea.md"})
    assert example_index.search("water", where={"source": "no-such-file.md"}) == []  # a known key: just no match


def test_qdrant_url_answering_404_is_reported_as_such():
    import http.server

    class NotQdrant(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotQdrant)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(IndexStoreError, match=r"answered HTTP 404 Not Found; is this a Qdrant server"):
            Index(url=f"http://127.0.0.1:{server.server_port}", timeout=2)
    finally:
        server.shutdown()
    silent = socket.socket()  # accepts, never answers: a fraction of a second is honoured
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    started = time.perf_counter()
    with pytest.raises(IndexStoreError, match=r"did not answer within 0.3 s"):
        Index(url=f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3)
    assert time.perf_counter() - started < 0.9
    silent.close()
