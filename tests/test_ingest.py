"""Ingestion: discovery rules, loaders and every bad-input case, the token-aware chunker."""

import os
import tempfile
from pathlib import Path

import pytest

from files import as_other_user, text_pdf, write_topics
from files import one_thread  # noqa: F401  (autouse: one torch thread)
from lganna_rag.ingest import Chunker, FileRef, LoadedFile, Skip, chunk_id, discover, html_to_text, load_file


def _ref(path: Path) -> FileRef:
    return FileRef(path, path.parent, path.name)


# ---------------------------------------------------------------------------------------------- discovery
def test_discover_walks_sorted_with_include_exclude_and_hidden(tmp_path):
    write_topics(tmp_path / "docs")
    (tmp_path / "docs" / "sub").mkdir()
    (tmp_path / "docs" / "sub" / "deep.rst").write_text("Deep\n====\n\ntext")
    (tmp_path / "docs" / ".git").mkdir()
    (tmp_path / "docs" / ".git" / "config.txt").write_text("hidden")
    (tmp_path / "docs" / "drafts").mkdir()
    (tmp_path / "docs" / "drafts" / "wip.md").write_text("draft")
    (tmp_path / "docs" / "photo.png").write_bytes(b"\x89PNG")
    found = discover([tmp_path / "docs"], exclude=["drafts"])
    assert [f.source for f in found.files] == ["chess.txt", "espresso.md", "sub/deep.rst", "volcanoes.md"]
    assert found.folder_roots == [(tmp_path / "docs").resolve()]
    assert [(s.source, s.reason.split(" (")[0]) for s in found.skipped] == [("photo.png", "unsupported file type")]
    only_md = discover([tmp_path / "docs"], include=["*.md"])
    assert [f.source for f in only_md.files] == ["drafts/wip.md", "espresso.md", "volcanoes.md"]
    # --include admits unknown types (read as text); a path pattern with a folder works too
    assert [f.source for f in discover([tmp_path / "docs"], include=["sub/*"]).files] == ["sub/deep.rst"]


def test_discover_files_and_globs_and_missing_paths(tmp_path):
    write_topics(tmp_path)
    found = discover([tmp_path / "chess.txt", str(tmp_path / "*.md")])
    assert [(f.source, f.root) for f in found.files] == [
        ("chess.txt", tmp_path.resolve()), ("espresso.md", tmp_path.resolve()), ("volcanoes.md", tmp_path.resolve())]
    assert found.folder_roots == []  # no pruning scope for single files and patterns
    (tmp_path / "sub").mkdir()
    os.symlink("/etc/hostname", tmp_path / "sub" / "host.md")
    os.symlink(tmp_path / "chess.txt", tmp_path / "sub" / "chess-link.md")
    linked = discover([str(tmp_path / "sub" / "*.md")])
    outside = f"symlink points outside {(tmp_path / 'sub').resolve()}"
    assert [(s.source.rsplit("/", 1)[-1], s.reason.split(" (")[0]) for s in linked.skipped] == [
        ("chess-link.md", outside), ("host.md", outside)]  # the pattern's folder is sub/
    assert linked.files == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover([tmp_path / "nope"])
    with pytest.raises(FileNotFoundError, match="matches no files"):
        discover([str(tmp_path / "*.xyz")])


def test_file_types_follow_one_rule_whether_passed_directly_or_inside_a_folder(tmp_path):
    """A text file named x.docx is skipped (unsupported type) both ways; --include admits it as text both ways."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.docx").write_text("plain text that only looks like a Word file")
    direct, walked = discover([tmp_path / "docs" / "x.docx"]), discover([tmp_path / "docs"])
    for found in (direct, walked):
        assert found.files == []
        assert [(s.source, s.reason) for s in found.skipped] == [
            ("x.docx", "unsupported file type (.docx); use --include to index it as text")]
    for found in (discover([tmp_path / "docs" / "x.docx"], include=["*.docx"]), discover([tmp_path / "docs"], include=["*.docx"])):
        assert [f.source for f in found.files] == ["x.docx"] and found.skipped == []


def test_empty_folder_finds_nothing(tmp_path):
    found = discover([tmp_path])
    assert found.files == [] and found.skipped == [] and found.folder_roots == [tmp_path.resolve()]


def test_symlinks_outside_root_and_loops_are_not_followed(tmp_path):
    outside = tmp_path / "outside"
    write_topics(outside)
    root = tmp_path / "root"
    write_topics(root)
    os.symlink(outside, root / "ext-dir")
    os.symlink(outside / "chess.txt", root / "ext-file.txt")
    os.symlink(root, root / "loop")
    (root / "inner").mkdir()
    (root / "inner" / "note.md").write_text("inner note")
    os.symlink(root / "inner", root / "inner-link")  # inside the root, already visited: not walked twice
    os.symlink(root / "missing.md", root / "broken.md")
    found = discover([root])
    assert sorted(f.source for f in found.files) == ["chess.txt", "espresso.md", "inner/note.md", "volcanoes.md"]
    reasons = {s.source: s.reason for s in found.skipped}
    assert "outside the indexed root" in reasons["ext-dir"]
    assert "outside the indexed root" in reasons["ext-file.txt"]
    assert "symlink loop" in reasons["loop/"]
    assert "broken symlink" in reasons["broken.md"]
    assert not any(s.failed for s in found.skipped)


# ---------------------------------------------------------------------------------------------- loading
def test_loaders_markdown_html_pdf(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\nBody text.")
    loaded = load_file(_ref(tmp_path / "a.md"))
    assert isinstance(loaded, LoadedFile) and loaded.text == "# Title\n\nBody text." and len(loaded.file_hash) == 64
    (tmp_path / "p.html").write_text(
        "<html><head><title>Tea</title><style>p{color:red}</style><script>var x = 1;</script></head>"
        "<body><h1>Green&nbsp;tea</h1><p>Brew at 80 &deg;C.</p><p>Steep   two\nminutes.</p></body></html>")
    html = load_file(_ref(tmp_path / "p.html"))
    assert html.text == "Tea\n\nGreen tea\n\nBrew at 80 °C.\n\nSteep two minutes."
    assert "color" not in html.text and "var x" not in html.text
    (tmp_path / "doc.pdf").write_bytes(text_pdf("Glaciers carve U-shaped valleys"))
    assert load_file(_ref(tmp_path / "doc.pdf")).text == "Glaciers carve U-shaped valleys"
    (tmp_path / "code.py").write_text("def f():\n    return 1\n")
    assert load_file(_ref(tmp_path / "code.py")).text.startswith("def f()")


def test_bad_inputs_are_skipped_with_reasons(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"abc\x00\x01\x02def")
    (tmp_path / "empty.md").write_bytes(b"")
    (tmp_path / "blank.md").write_text("   \n\n  ")
    (tmp_path / "big.txt").write_text("word " * 500)
    (tmp_path / "fake.pdf").write_text("not a pdf at all")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage")
    (tmp_path / "only-script.html").write_text("<script>alert(1)</script>")
    results = {p: load_file(_ref(tmp_path / p), max_file_mb=0.001) for p in
               ["bin.txt", "empty.md", "blank.md", "big.txt", "fake.pdf", "broken.pdf", "only-script.html"]}
    assert all(isinstance(r, Skip) for r in results.values())
    assert results["bin.txt"].reason == "binary file" and not results["bin.txt"].failed
    assert results["empty.md"].reason == "empty file" and results["blank.md"].reason == "empty file"
    assert "larger than --max-file-mb 0.001" in results["big.txt"].reason
    assert results["fake.pdf"].failed and "no %PDF header" in results["fake.pdf"].reason
    assert results["broken.pdf"].failed and "could not read PDF" in results["broken.pdf"].reason
    assert results["only-script.html"].reason == "no text content"


def test_invalid_utf8_is_replaced_with_a_warning(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("Café au lait: coffee with hot milk.".encode("latin-1"))
    loaded = load_file(_ref(tmp_path / "latin1.txt"))
    assert isinstance(loaded, LoadedFile)
    assert loaded.text == "Caf\ufffd au lait: coffee with hot milk."
    assert loaded.warnings == ["invalid UTF-8 (first bad byte at offset 3); 1 character(s) replaced with U+FFFD"]
    (tmp_path / "utf16.txt").write_bytes("Grüße aus Köln".encode("utf-16"))  # BOM + NUL bytes: still text
    assert load_file(_ref(tmp_path / "utf16.txt")).text == "Grüße aus Köln"


def test_unreadable_file_is_a_failure_not_a_crash():
    folder = Path(tempfile.mkdtemp(prefix="lganna-perm-"))
    folder.chmod(0o755)  # traversable by the other user
    path = folder / "secret.md"
    path.write_text("classified")
    path.chmod(0o000)
    try:
        with as_other_user():
            result = load_file(_ref(path))
        assert isinstance(result, Skip) and result.failed
        assert result.reason == "cannot read: Permission denied"
    finally:
        path.chmod(0o644)


# ---------------------------------------------------------------------------------------------- chunking
def _n_tokens(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("which", ["minilm", "mistral"])
def test_chunks_respect_size_overlap_spans_and_headings(which, request):
    encoder = request.getfixturevalue(which)
    sections = []
    for i in range(6):
        n = 20 if i == 2 else 4  # section 2 is too long for one chunk
        body = " ".join(f"Sentence {j} of section {i} talks about topic {i} in some detail." for j in range(n))
        sections.append(f"## Section {i}\n\n{body}")
    text = "# Guide\n\n" + "\n\n".join(sections)
    chunker = Chunker(encoder.tokenizer, size=96, overlap=20)
    chunks = chunker.split(text)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert text[c.start:c.end] == c.text and c.text == c.text.strip()
        assert _n_tokens(encoder.tokenizer, c.text) <= 96 + 1
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    # cuts fall on sentence ends; a chunk that does not repeat its predecessor's tail starts at a heading
    assert all(c.text.endswith("detail.") for c in chunks)
    for a, b in zip(chunks, chunks[1:]):
        if b.start >= a.end:
            assert b.text.startswith("## Section")
        else:  # overlap inside the long section, starting at a sentence
            assert "section 2" in a.text and b.text.startswith("Sentence")
    assert sum(b.start < a.end for a, b in zip(chunks, chunks[1:])) >= 2
    assert sum(c.text.startswith("## Section") for c in chunks) >= 4
    assert Chunker(encoder.tokenizer, 96, 20).split(text) == chunks  # deterministic
    assert chunker.split("  \n\n ") == []


def test_chunker_validates_settings(minilm):
    with pytest.raises(ValueError, match="at least 8"):
        Chunker(minilm.tokenizer, size=4)
    with pytest.raises(ValueError, match="overlap must be between 0 and half"):
        Chunker(minilm.tokenizer, size=64, overlap=40)


def test_chunk_ids_are_deterministic_uuid5():
    a = chunk_id("/docs/a.md", 0, "hello")
    assert a == chunk_id("/docs/a.md", 0, "hello")
    assert len({a, chunk_id("/docs/a.md", 1, "hello"), chunk_id("/docs/b.md", 0, "hello"),
                chunk_id("/docs/a.md", 0, "hello!")}) == 4
    assert a[14] == "5"  # UUID version 5


def test_html_to_text_keeps_title_and_paragraphs():
    assert html_to_text("<title>T</title><div>a<br>b</div><noscript>x</noscript>") == "T\n\na\n\nb"


# ---------------------------------------------------------------------------------------------- issue 14
def test_globs_stay_inside_their_folder_and_check_file_types(tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "id_rsa").write_text("-----BEGIN PRIVATE KEY-----")
    (secret / "notes.md").write_text("# Secret notes")
    docs = write_topics(tmp_path / "docs")
    (docs / "link").symlink_to("../secret")  # a symlinked folder leading out of docs/
    (docs / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    (docs / "inner").mkdir()
    (docs / "inner" / "deep.md").write_text("# Deep")
    (docs / "inner-link").symlink_to("inner")  # inside: followed, but the file is listed once
    found = discover([str(docs / "**" / "*")])
    assert sorted(f.source for f in found.files) == ["chess.txt", "espresso.md", "inner/deep.md", "volcanoes.md"]
    assert not any("secret" in str(f.path.resolve()) for f in found.files)
    reasons = {s.source: s.reason for s in found.skipped}
    assert reasons["link/id_rsa"].startswith(f"symlink points outside {docs.resolve()}")
    assert reasons["link/notes.md"].startswith(f"symlink points outside {docs.resolve()}")
    assert reasons["photo.jpg"].startswith("unsupported file type (.jpg)")
    assert [f.source for f in discover([str(docs / "**" / "*.jpg")], include=["*.jpg"]).files] == ["photo.jpg"]


def test_reads_are_bounded_on_the_bytes_read(tmp_path, monkeypatch):
    import lganna_rag.ingest as ingest

    # /proc files report size 0 to stat: the limit must apply to what is read
    proc = Path("/proc/self/maps")
    result = load_file(FileRef(proc, proc.parent, "maps"), max_file_mb=0.0001)
    assert isinstance(result, Skip) and result.reason.startswith("larger than --max-file-mb 0.0001 (more than")
    # the option can be disabled, the hard ceiling cannot
    monkeypatch.setattr(ingest, "MAX_FILE_MB_CEILING", 0.001)
    (tmp_path / "big.txt").write_text("word " * 500)
    for disabled in (0, None, 1e9):
        skipped = load_file(_ref(tmp_path / "big.txt"), max_file_mb=disabled)
        assert isinstance(skipped, Skip) and skipped.reason.startswith("larger than the hard limit 0.001")
    # a pipe swapped in after discovery fails instead of blocking the run
    os.mkfifo(tmp_path / "pipe.md")
    fifo = load_file(_ref(tmp_path / "pipe.md"))
    assert isinstance(fifo, Skip) and fifo.failed and "not a regular file" in fifo.reason


def _flate_pdf(payload: bytes) -> bytes:
    """A one-page PDF whose content stream is ``payload`` compressed with FlateDecode."""
    import zlib

    stream = zlib.compress(payload, 9)
    pdf = text_pdf("Small visible text")
    head, _, _ = pdf.partition(b"4 0 obj\n")
    body = b"4 0 obj\n<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream\nendobj\n"
    rest = b"5 0 obj\n<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>\nendobj\n"
    out = head + body + rest
    xref = len(out)
    offsets = [out.index(b"%d 0 obj\n" % i) for i in range(1, 6)]
    out += b"xref\n0 6\n0000000000 65535 f \n" + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size 6 /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return out


def test_pdf_decompression_is_bounded_and_quiet(tmp_path, monkeypatch, capfd):
    import lganna_rag.ingest as ingest

    (tmp_path / "ok.pdf").write_bytes(_flate_pdf(b"BT /F1 12 Tf 72 712 Td (Compressed but fine) Tj ET"))
    assert load_file(_ref(tmp_path / "ok.pdf")).text == "Compressed but fine"
    monkeypatch.setattr(ingest, "MAX_PDF_STREAM_BYTES", 1 << 20)
    bomb = b"BT /F1 12 Tf 72 712 Td (bomb) Tj ET\n" + b" " * (8 << 20)  # 8 MB of spaces, ~8 KB compressed
    (tmp_path / "bomb.pdf").write_bytes(_flate_pdf(bomb))
    assert (tmp_path / "bomb.pdf").stat().st_size < 64 * 1024
    result = load_file(_ref(tmp_path / "bomb.pdf"))
    assert isinstance(result, Skip) and result.failed and result.reason.startswith("could not read PDF")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage")
    assert load_file(_ref(tmp_path / "broken.pdf")).failed
    assert capfd.readouterr().err == ""  # pypdf's own warnings are not printed


def test_non_utf8_file_names_are_listed_with_a_printable_name(tmp_path):
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/d\xe9j\xe0"))
    folder.mkdir()
    bad = Path(os.fsdecode(bytes(folder) + b"/b\xff.md"))
    bad.write_text("# Latin-1 named file about glaciers")
    (folder / "ok.md").write_text("# fine")
    found = discover([folder])
    assert [f.source for f in found.files] == ["b\\xff.md", "ok.md"]
    ref = found.files[0]
    assert ref.identity == f"{tmp_path}/d\\xe9j\\xe0/b\\xff.md" and ref.identity.encode("utf-8")
    loaded = load_file(ref)
    assert isinstance(loaded, LoadedFile) and "glaciers" in loaded.text
    assert chunk_id(ref.identity, 0, loaded.text) == chunk_id(ref.identity, 0, loaded.text)
    # a glob and an explicit file argument give printable names too
    assert [f.source for f in discover([str(folder / "*.md")]).files] == ["b\\xff.md", "ok.md"]
    assert [f.source for f in discover([bad]).files] == ["b\\xff.md"]


def test_symlink_to_a_folder_walked_already_is_not_called_a_loop(tmp_path):
    root = write_topics(tmp_path / "root")
    (root / "b").mkdir()
    (root / "b" / "x.md").write_text("x")
    os.symlink(root / "b", root / "c")  # walked after b/
    os.symlink(root, root / "b" / "up")  # a real loop
    reasons = {s.source: s.reason for s in discover([root]).skipped}
    assert reasons["c/"].startswith("symlink to a folder already indexed") and "loop" not in reasons["c/"]
    assert reasons["b/up/"].startswith("symlink loop")


def test_lone_surrogates_are_cleaned_in_files_and_a_clear_error_for_texts(tmp_path, mistral):
    from lganna_rag.ingest import clean_text

    assert clean_text("a\ud800b\udfffc") == ("a\ufffdb\ufffdc", "invalid Unicode (lone surrogate at character 1); "
                                                                 "2 character(s) replaced with U+FFFD")
    with pytest.raises(ValueError, match=r"texts\[1\] has a lone surrogate \(U\+D800\) at character 3"):
        mistral.encode_documents(["fine", "bad\ud800"])
