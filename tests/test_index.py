"""The Qdrant index: retrieval quality on the example folder, incremental indexing, bad input, stores."""

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
    assert set(example_index.backend._open().info().payload_schema) == {"source", "root"}
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
    import lganna_rag.index as index_module

    monkeypatch.setattr(index_module, "WRITE_BATCH", 16)
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
    # a run killed between writing collection.json and creating the shard: the next run creates it
    shutil.rmtree(tmp_path / "store" / "default" / "shard")
    with Index(tmp_path / "store", encoder=mistral) as index:
        assert len(index.add_files([docs]).indexed) == 3 and index.count() == n
        assert set(index.backend._open().info().payload_schema) == {"source", "root"}
    meta.unlink()  # a shard without its description is not guessed at
    with pytest.raises(IndexStoreError, match="has a shard but no collection.json"):
        Index(tmp_path / "store", encoder=mistral)


def test_store_in_use_by_another_process_is_a_clear_error(mistral, tmp_path):
    docs = write_topics(tmp_path / "docs")
    first = Index(tmp_path / "store", encoder=mistral)
    first.add_files([docs])
    with pytest.raises(IndexStoreError, match="in use by another process"):
        Index(tmp_path / "store", encoder=mistral).count()
    n = first.count()
    first.close()  # releases the lock
    with Index(tmp_path / "store", encoder=mistral) as second:
        assert second.count() == n > 0


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
