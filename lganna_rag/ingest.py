"""Document ingestion: find files, load their text, split it into token-sized chunks.

``discover`` walks folders, files and glob patterns (include/exclude patterns, hidden folders skipped,
symlinks followed only while they stay inside the indexed root and do not loop); ``load_file`` reads
.md/.txt/.rst, HTML (text only), PDF (pypdf) and common source files, reporting every file it skips
with the reason; ``Chunker`` splits text by the model's tokenizer into chunks of at most ``size``
tokens with ``overlap``, cutting preferably at headings, then paragraphs, then line and sentence
ends. Chunk ids are deterministic (UUIDv5 of path, index and content hash), so re-indexing is
idempotent.
"""

from __future__ import annotations

import bisect
import codecs
import errno
import fnmatch
import glob
import hashlib
import os
import re
import stat
import uuid
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

#: Namespace of all chunk ids (UUIDv5).
ID_NAMESPACE = uuid.UUID("6c1f3a52-8f0e-5d7b-9a4c-2b1d0e7f9a31")

MARKUP_EXTENSIONS = frozenset({".md", ".markdown", ".mdx", ".txt", ".text", ".rst", ".adoc", ".org", ".tex"})
HTML_EXTENSIONS = frozenset({".html", ".htm", ".xhtml"})
PDF_EXTENSIONS = frozenset({".pdf"})
CODE_EXTENSIONS = frozenset({
    ".py", ".pyi", ".ipynb", ".js", ".mjs", ".cjs", ".ts", ".tsx", ".jsx", ".vue", ".svelte", ".java", ".kt",
    ".kts", ".scala", ".groovy", ".gradle", ".go", ".rs", ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh",
    ".cs", ".fs", ".swift", ".m", ".mm", ".rb", ".php", ".pl", ".pm", ".lua", ".r", ".jl", ".dart", ".ex",
    ".exs", ".erl", ".hs", ".ml", ".clj", ".sh", ".bash", ".zsh", ".fish", ".ps1", ".sql", ".css", ".scss",
    ".less", ".proto", ".graphql", ".yaml", ".yml", ".toml", ".ini", ".cfg",
})
#: Extension-less file names that are text.
TEXT_NAMES = frozenset({"README", "LICENSE", "NOTICE", "CHANGELOG", "AUTHORS", "Makefile", "Dockerfile"})
SUPPORTED_EXTENSIONS = MARKUP_EXTENSIONS | HTML_EXTENSIONS | PDF_EXTENSIONS | CODE_EXTENSIONS
#: Always excluded: hidden files and folders (.git, .venv, .lganna, ...) and build/dependency folders.
DEFAULT_EXCLUDES = (".*", "node_modules", "__pycache__", "*.egg-info", "venv")
DEFAULT_MAX_FILE_MB = 20.0
#: Hard ceiling on the bytes read from one file, even when ``max_file_mb`` is 0 (disabled) or larger.
MAX_FILE_MB_CEILING = 256.0
#: Most characters of text taken from one PDF, and most bytes one PDF stream may decompress to.
MAX_PDF_TEXT_CHARS = 32 * 1024 * 1024
MAX_PDF_STREAM_BYTES = 64 * 1024 * 1024
#: Text and source files larger than this are read, hashed and chunked in segments, in bounded memory.
STREAM_BYTES = 8 * 1024 * 1024
#: Characters per segment of a streamed file (cut at a paragraph break, else a line break, in its last fifth).
SEGMENT_CHARS = 1 << 20
_BLOCK = 1 << 20


def safe_name(path: str | os.PathLike) -> str:
    """A printable, UTF-8-encodable form of a path: undecodable bytes of a non-UTF-8 name (surrogate
    escapes) become ``\\xNN``; every other path is unchanged."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", errors="backslashreplace")


def path_from_safe_name(name: str) -> str:
    """Best-effort inverse of :func:`safe_name` (``\\xNN`` escapes back to the bytes they stand for)."""
    if "\\x" not in name:
        return name
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), name.encode("utf-8"))
    return os.fsdecode(raw)


def file_identity(path: str | os.PathLike) -> str:
    """A file's identity in a collection: its resolved absolute path (as :func:`safe_name`)."""
    return safe_name(Path(path).resolve().as_posix())


def clean_text(text: str) -> tuple[str, str | None]:
    """Replace lone surrogates (not valid Unicode; tokenizers reject them) with U+FFFD; returns a warning."""
    try:
        text.encode("utf-8")
        return text, None
    except UnicodeEncodeError as exc:
        bad = sum(1 for ch in text if "\ud800" <= ch <= "\udfff")
        cleaned = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
        return cleaned, (f"invalid Unicode (lone surrogate at character {exc.start}); {bad} character(s) replaced "
                         f"with U+FFFD")


# ------------------------------------------------------------------------------------------ discovery
@dataclass(frozen=True)
class FileRef:
    """A file to index: its path, the root it was reached from and its path relative to that root.

    ``source`` is printable (see :func:`safe_name`); the file's identity in a collection is
    :func:`file_identity` of ``path`` (its resolved absolute path), whatever root it was reached from.
    """

    path: Path
    root: Path
    source: str

    @property
    def identity(self) -> str:
        """The resolved absolute path (printable form): one identity per file, whatever root reached it."""
        return file_identity(self.path)


@dataclass(frozen=True)
class Skip:
    """A file that was not indexed, and why (``failed`` marks errors rather than policy skips).

    ``path`` is the absolute path skipped (a folder for an unreadable folder), when known.
    """

    source: str
    reason: str
    root: Path | None = None
    failed: bool = False
    path: Path | None = None


@dataclass
class Discovery:
    """What ``discover`` found: files to load, skips, and the folder roots whose other chunks may be pruned."""

    files: list[FileRef] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    folder_roots: list[Path] = field(default_factory=list)

    @property
    def failed_folders(self) -> list[Path]:
        """Folders that could not be read: their files keep their chunks."""
        return [s.path for s in self.skipped if s.failed and s.path is not None and s.source.endswith("/")]


def _matches(rel: str, patterns: Iterable[str]) -> bool:
    """``rel`` (posix) matches a pattern: patterns without ``/`` match any path component's name."""
    parts = rel.split("/")
    for pat in patterns:
        pat = pat.strip("/")
        if "/" in pat:
            if fnmatch.fnmatchcase(rel, pat) or fnmatch.fnmatchcase(rel, pat + "/*"):
                return True
        elif any(fnmatch.fnmatchcase(p, pat) for p in parts):
            return True
    return False


def is_supported(name: str) -> bool:
    """Whether a file name has an extension (or name) this module knows how to load."""
    path = Path(name)
    return path.suffix.lower() in SUPPORTED_EXTENSIONS or path.name in TEXT_NAMES


def _unsupported(rel: str, name: str, root: Path | None, path: Path) -> Skip:
    return Skip(rel, f"unsupported file type ({Path(name).suffix or 'no extension'}); use --include to index it "
                     f"as text", root, path=path)


def discover(
    paths: Sequence[str | os.PathLike],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> Discovery:
    """Expand folders, files and glob patterns into files to index.

    Folders are walked recursively (sorted, so runs are deterministic); their files are relative to the
    folder, which becomes a *folder root* (chunks of its files that no longer exist may be pruned). A
    file argument's root is its folder; a glob's root is the folder before its first wildcard, and a
    glob, like a folder walk, never follows a symlink out of that root and applies the same file-type
    check. ``include`` keeps only matching files (and admits unknown extensions as text); ``exclude``
    adds to :data:`DEFAULT_EXCLUDES`. A file reached twice (through a symlink, or by two arguments) is
    listed once. Raises ``FileNotFoundError`` for a path that does not exist or a pattern that matches
    nothing.
    """
    found = Discovery()
    excludes = (*DEFAULT_EXCLUDES, *exclude)
    seen: set[Path] = set()  # resolved folders walked and files listed
    for raw in paths:
        text = os.fspath(raw)
        if glob.has_magic(text) and not Path(text).exists():
            pattern = os.path.expanduser(text)
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise FileNotFoundError(f"pattern {safe_name(text)!r} matches no files")
            base, shown_base = _glob_base(pattern)
            for m in matches:
                _add_glob_match(found, Path(m), base, shown_base, include, excludes, seen)
            continue
        path = Path(text).expanduser()
        if not path.exists() and not path.is_symlink():
            raise FileNotFoundError(f"path {safe_name(text)!r} does not exist")
        if path.is_dir():
            root = path.resolve()
            found.folder_roots.append(root)
            if root not in seen:
                seen.add(root)
                _walk(found, root, root, include, excludes, seen, {root})
        elif path.is_file():
            _add_file(found, path, include, excludes, seen, explicit=True)
        else:
            found.skipped.append(Skip(safe_name(text), "not a regular file or folder (broken symlink, device or pipe)",
                                      path=Path(os.path.abspath(path))))
    return found


def _glob_base(pattern: str) -> tuple[Path, Path]:
    """The folder a glob pattern searches (its leading parts without wildcards): resolved, and as written."""
    parts = Path(pattern).parts
    fixed = parts[: next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]
    shown = Path(os.path.abspath(Path(*fixed))) if fixed else Path.cwd()
    return shown.resolve(), shown


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _add_glob_match(found: Discovery, match: Path, base: Path, shown_base: Path, include: Sequence[str],
                    excludes: Sequence[str], seen: set[Path]) -> None:
    """One glob match: kept inside the pattern's folder (symlinks included), excludes and file types applied."""
    absolute = Path(os.path.abspath(match))
    try:
        rel = absolute.relative_to(shown_base).as_posix()
    except ValueError:
        rel = absolute.name
    shown = safe_name(rel)
    try:
        real = match.resolve()
        st = real.stat()
    except OSError as exc:
        found.skipped.append(Skip(shown, f"cannot stat: {exc.strerror or exc}", base, failed=True, path=absolute))
        return
    if _inside(real, base) and real != base:  # named by where it really is (one name through in-root symlinks)
        rel = real.relative_to(base).as_posix()
        shown = safe_name(rel)
    if not _inside(real, base):
        # a symlinked file, or any file under a symlinked folder, that leads out of the pattern's folder
        found.skipped.append(Skip(shown, f"symlink points outside {safe_name(base)} (-> {safe_name(real)}); not "
                                         f"followed", base, path=absolute))
        return
    if stat.S_ISDIR(st.st_mode) or _matches(rel, excludes):
        return
    if not stat.S_ISREG(st.st_mode):
        found.skipped.append(Skip(shown, "not a regular file (device, socket or pipe)", base, path=absolute))
        return
    if include:
        if not _matches(rel, include):
            return
    elif not is_supported(match.name):
        found.skipped.append(_unsupported(shown, match.name, base, absolute))
        return
    if real in seen:
        return
    seen.add(real)
    found.files.append(FileRef(real, base, shown))


def _add_file(found: Discovery, path: Path, include: Sequence[str], excludes: Sequence[str], seen: set[Path],
              *, explicit: bool) -> None:
    real = path.resolve()
    root = real.parent
    ref = FileRef(real, root, safe_name(real.name))
    if real in seen:
        return
    seen.add(real)
    if not explicit and _matches(real.name, excludes):
        return
    if include and not _matches(real.name, include):
        return
    if not include and not is_supported(real.name):  # the same rule as inside folders: --include admits it as text
        found.skipped.append(_unsupported(ref.source, real.name, root, real))
        return
    found.files.append(ref)


def _walk(found: Discovery, root: Path, folder: Path, include: Sequence[str], excludes: Sequence[str],
          seen: set[Path], ancestors: set[Path]) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        found.skipped.append(Skip(safe_name(_rel(folder, root)) + "/", f"folder not readable: {exc.strerror or exc}",
                                  root, failed=True, path=folder.resolve()))
        return
    for entry in entries:
        path = Path(entry.path)
        rel = _rel(path, root)
        shown = safe_name(rel)
        if _matches(rel, excludes):
            continue
        try:
            is_link = entry.is_symlink()
            if is_link:
                target = Path(os.path.realpath(path))
                if not target.exists():
                    found.skipped.append(Skip(shown, f"broken symlink (-> {safe_name(os.readlink(path))})", root,
                                              path=path))
                    continue
                if not _inside(target, root):
                    found.skipped.append(Skip(shown, f"symlink points outside the indexed root (-> {safe_name(target)}); "
                                                     f"not followed", root, path=path))
                    continue
            else:
                target = path
            st = path.stat()
        except OSError as exc:
            found.skipped.append(Skip(shown, f"cannot stat: {exc.strerror or exc}", root, failed=True, path=path))
            continue
        if stat.S_ISDIR(st.st_mode):
            real = target.resolve()
            if real in ancestors:
                found.skipped.append(Skip(shown + "/", f"symlink loop (-> {safe_name(real)}); not followed", root,
                                          path=path))
                continue
            if real in seen:  # e.g. a symlink to a folder walked already: its files are listed once
                if is_link:
                    found.skipped.append(Skip(shown + "/", f"symlink to a folder already indexed (-> "
                                                           f"{safe_name(real)}); not walked twice", root, path=path))
                continue
            seen.add(real)
            _walk(found, root, path, include, excludes, seen, ancestors | {real})
        elif stat.S_ISREG(st.st_mode):
            if include:
                if not _matches(rel, include):
                    continue
            elif not is_supported(entry.name):
                found.skipped.append(_unsupported(shown, entry.name, root, path))
                continue
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            found.files.append(FileRef(path, root, shown))
        else:
            found.skipped.append(Skip(shown, "not a regular file (device, socket or pipe)", root, path=path))


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path != root else "."


# ------------------------------------------------------------------------------------------ loading
@dataclass
class LoadedFile:
    """A file's text and the SHA-256 of its bytes, with warnings (e.g. invalid UTF-8 replaced)."""

    ref: FileRef
    text: str
    file_hash: str
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StreamedFile:
    """A large text file, read in segments (:meth:`segments`) instead of at once; its hash and warnings come from a
    first pass over its bytes."""

    ref: FileRef
    file_hash: str
    warnings: list[str] = field(default_factory=list)

    def segments(self) -> Iterator[tuple[int, str]]:
        """``(offset, text)`` of consecutive pieces of the file's text (``offset``: characters before the piece)."""
        decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        fd = open_checked(self.ref.path, self.ref.root)
        buffer, offset = "", 0
        try:
            while True:
                block = os.read(fd, _BLOCK)
                buffer += decoder.decode(block, final=not block)
                while len(buffer) >= SEGMENT_CHARS or (not block and buffer):
                    cut = _segment_end(buffer) if len(buffer) >= SEGMENT_CHARS else len(buffer)
                    yield offset, buffer[:cut]
                    offset, buffer = offset + cut, buffer[cut:]
                if not block:
                    return
        finally:
            os.close(fd)


def _segment_end(text: str) -> int:
    """Where to end a segment of ``text`` (at most :data:`SEGMENT_CHARS`): after the last paragraph break in its
    last fifth, else after the last line break there, else at the limit."""
    low = SEGMENT_CHARS * 4 // 5
    for sep in ("\n\n", "\n"):
        found = text.rfind(sep, low, SEGMENT_CHARS)
        if found >= 0:
            return found + len(sep)
    return SEGMENT_CHARS


def _scan(path: Path, root: Path, limit: int) -> tuple[str, int, bool, bool, int | None]:
    """One pass over a file's bytes: its SHA-256, size read (at most ``limit + 1``), whether it holds a NUL byte or
    any non-space byte, and the offset of the first invalid UTF-8 byte (``None``: valid)."""
    digest, size, nul, content, bad = hashlib.sha256(), 0, False, False, None
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
    fd = open_checked(path, root)
    try:
        while size <= limit:
            block = os.read(fd, min(_BLOCK, limit + 1 - size))
            digest.update(block)
            nul, content = nul or b"\x00" in block, content or bool(block.strip())
            if bad is None:
                try:
                    decoder.decode(block, final=not block)
                except UnicodeDecodeError as exc:
                    bad = size + max(0, exc.start)
            size += len(block)
            if not block:
                break
    finally:
        os.close(fd)
    return digest.hexdigest(), size, nul, content, bad


class _HTMLText(HTMLParser):
    """Visible text of an HTML page: scripts and styles dropped, block elements become paragraphs."""

    BLOCKS = frozenset({"p", "div", "section", "article", "header", "footer", "main", "nav", "aside", "li", "ul",
                        "ol", "table", "tr", "pre", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "title",
                        "dt", "dd", "figure", "figcaption", "form", "hr", "br"})
    HIDDEN = frozenset({"script", "style", "noscript", "template", "svg", "head"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Enter hidden elements; block elements start a paragraph."""
        if tag == "title":
            self.in_title = True
        elif tag in self.HIDDEN:
            self.hidden += 1
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        """Leave hidden elements; block elements end a paragraph."""
        if tag == "title":
            self.in_title = False
        elif tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        """Keep visible text (and the title)."""
        if self.in_title or not self.hidden:
            self.parts.append(data)

    def text(self) -> str:
        """The collected text, whitespace collapsed within paragraphs."""
        out: list[str] = []
        for p in re.split(r"\n\s*\n", "".join(self.parts)):
            p = re.sub(r"\s+", " ", p).strip()
            if p and (not out or p != out[-1]):  # e.g. a <title> repeated by the first <h1>
                out.append(p)
        return "\n\n".join(out)


def html_to_text(html: str) -> str:
    """Visible text of an HTML document (no scripts/styles), one paragraph per block element."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    return parser.text()


def decode_text(data: bytes) -> tuple[str, str | None]:
    """Decode bytes as UTF-8 (or UTF-16 with a BOM); invalid bytes become U+FFFD and a warning is returned."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace"), None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        text = data.decode("utf-8", errors="replace")
        bad = text.count("\ufffd")
        return text, f"invalid UTF-8 (first bad byte at offset {exc.start}); {bad} character(s) replaced with U+FFFD"


def _looks_binary(data: bytes) -> bool:
    """A NUL byte anywhere (text never holds one), unless the text is UTF-16 (with its BOM)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False
    return b"\x00" in data


def _pdf_text(data: bytes) -> str:
    """Text of a PDF's pages; decompression and the text taken are bounded, pypdf's own warnings silenced."""
    import io
    import logging
    import warnings

    from pypdf import PdfReader, apply_configuration
    from pypdf.errors import PyPdfError

    limits = {name: MAX_PDF_STREAM_BYTES for name in (
        "zlib_maximum_output_length", "lzw_maximum_output_length", "run_length_maximum_output_length",
        "array_based_stream_maximum_output_length", "maximum_declared_stream_length")}
    pdf_logger = logging.getLogger("pypdf")
    level = pdf_logger.level
    pdf_logger.setLevel(logging.CRITICAL)  # "incorrect startxref pointer" and the like: noise on stderr
    try:
        with warnings.catch_warnings(), apply_configuration(**limits):
            warnings.simplefilter("ignore")
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                raise ValueError("the PDF is encrypted")
            pages, total = [], 0
            for page in reader.pages:
                text = (page.extract_text() or "").strip()
                total += len(text)
                if total > MAX_PDF_TEXT_CHARS:
                    raise ValueError(f"more than {MAX_PDF_TEXT_CHARS // 1024 // 1024} M characters of text")
                pages.append(text)
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError,
            MemoryError, OverflowError, ZeroDivisionError, AssertionError) as exc:
        raise ValueError(f"could not read PDF: {exc}") from exc
    finally:
        pdf_logger.setLevel(level)
    return "\n\n".join(p for p in pages if p)


class MovedError(OSError):
    """The file at a path found by discovery is not the file that was opened (a link swapped in meanwhile)."""


def open_checked(path: Path, root: Path) -> int:
    """A read descriptor of the regular file at ``path``, opened without following a link in its last part and
    checked to be the file that ``path`` resolves to now, inside ``root``: a file or folder swapped for a link
    (e.g. out of the indexed folder) between discovery and reading raises :class:`MovedError` instead of being
    read. Never blocks on a pipe."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is a link now
            raise MovedError(errno.ELOOP, "it became a symlink after the folder was read; not followed", str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(errno.EINVAL, "not a regular file", str(path))
        real = Path(os.path.realpath(path))
        now = os.stat(real)
        if not _inside(real, Path(os.path.realpath(root))) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise MovedError(errno.ESTALE, f"its path leads elsewhere now ({safe_name(real)}); not read", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_bounded(path: Path, root: Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of the regular file at ``path`` (opened by :func:`open_checked`)."""
    fd = open_checked(path, root)
    try:
        chunks, left = [], limit + 1
        while left > 0:
            block = os.read(fd, min(left, 1 << 20))
            if not block:
                break
            chunks.append(block)
            left -= len(block)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_file(ref: FileRef, max_file_mb: float | None = DEFAULT_MAX_FILE_MB) -> LoadedFile | StreamedFile | Skip:
    """Read and decode one file; return a :class:`Skip` (with its reason) instead of raising. Text files larger
    than :data:`STREAM_BYTES` come back as a :class:`StreamedFile`, read in segments when chunked.

    At most ``max_file_mb`` is read (the bytes actually read are counted, not only the size ``stat``
    reports); 0 or ``None`` disables the option, but never the hard ceiling :data:`MAX_FILE_MB_CEILING`.
    """
    shown = ref.source
    cap = MAX_FILE_MB_CEILING if not max_file_mb or max_file_mb > MAX_FILE_MB_CEILING else max_file_mb
    limit = int(cap * 1024 * 1024)
    option = "--max-file-mb" if cap == max_file_mb else "the hard limit"
    suffix = ref.path.suffix.lower()
    try:
        size = ref.path.stat().st_size
        if size > limit:
            return Skip(shown, f"larger than {option} {cap:g} ({size / 1024 / 1024:.1f} MB)", ref.root, path=ref.path)
        if size > STREAM_BYTES and suffix not in PDF_EXTENSIONS | HTML_EXTENSIONS:
            return _streamed(ref, limit, f"larger than {option} {cap:g} (more than {cap:g} MB read)")
        data = _read_bounded(ref.path, ref.root, limit)
    except MovedError as exc:  # a link swapped in while indexing: skipped, so its chunks go (never another file's)
        return Skip(shown, f"changed while indexing: {exc.strerror}", ref.root, path=ref.path)
    except OSError as exc:
        return Skip(shown, f"cannot read: {exc.strerror or exc}", ref.root, failed=True, path=ref.path)
    if len(data) > limit:  # the file grew after stat (or stat lied: /proc, FUSE)
        return Skip(shown, f"larger than {option} {cap:g} (more than {cap:g} MB read)", ref.root, path=ref.path)
    file_hash = hashlib.sha256(data).hexdigest()
    if not data.strip():
        return Skip(shown, "empty file", ref.root, path=ref.path)
    warnings: list[str] = []
    if suffix in PDF_EXTENSIONS:
        if not data.startswith(b"%PDF"):
            return Skip(shown, "not a PDF file (no %PDF header)", ref.root, failed=True, path=ref.path)
        try:
            text = _pdf_text(data)
        except ValueError as exc:
            return Skip(shown, str(exc), ref.root, failed=True, path=ref.path)
        text, warning = clean_text(text)
        if not text.strip():
            return Skip(shown, "PDF has no extractable text (scanned images?)", ref.root, path=ref.path)
        return LoadedFile(ref, text, file_hash, [warning] if warning else [])
    if _looks_binary(data):
        return Skip(shown, "binary file", ref.root, path=ref.path)
    text, warning = decode_text(data)
    if warning:
        warnings.append(warning)
    if suffix in HTML_EXTENSIONS:
        text = html_to_text(text)
    text, warning = clean_text(text)  # e.g. &#xD800; in HTML
    if warning:
        warnings.append(warning)
    if not text.strip():
        return Skip(shown, "no text content", ref.root, path=ref.path)
    return LoadedFile(ref, text, file_hash, warnings)


def _streamed(ref: FileRef, limit: int, too_large: str) -> StreamedFile | Skip:
    """A large text file as a :class:`StreamedFile` (or why it is skipped), after one pass over its bytes."""
    shown = ref.source
    try:
        with open(ref.path, "rb") as fh:
            head = fh.read(2)
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return Skip(shown, f"UTF-16 text larger than {STREAM_BYTES // 1024 // 1024} MB (convert it to UTF-8)",
                        ref.root, path=ref.path)
        file_hash, size, nul, content, bad = _scan(ref.path, ref.root, limit)
    except MovedError as exc:
        return Skip(shown, f"changed while indexing: {exc.strerror}", ref.root, path=ref.path)
    except OSError as exc:
        return Skip(shown, f"cannot read: {exc.strerror or exc}", ref.root, failed=True, path=ref.path)
    if size > limit:
        return Skip(shown, too_large, ref.root, path=ref.path)
    if nul:
        return Skip(shown, "binary file", ref.root, path=ref.path)
    if not content:
        return Skip(shown, "empty file", ref.root, path=ref.path)
    warnings = [] if bad is None else [f"invalid UTF-8 (first bad byte at offset {bad}); invalid bytes replaced with "
                                       f"U+FFFD"]
    return StreamedFile(ref, file_hash, warnings)


# ------------------------------------------------------------------------------------------ chunking
@dataclass(frozen=True)
class Chunk:
    """A piece of a document: its index in the file, character span ``[start, end)`` and text."""

    index: int
    start: int
    end: int
    text: str


def content_hash(text: str) -> str:
    """Short SHA-256 of a text (used in chunk ids)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def chunk_id(path: str, index: int, text: str) -> str:
    """Deterministic chunk id: UUIDv5 of the file path (:func:`safe_name` form), chunk index and content hash."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{safe_name(path)}\x00{index}\x00{content_hash(text)}"))


_HEADING = re.compile(r"(?m)^(?:#{1,6}[ \t]+\S|.+\n[=\-~^*#]{3,}[ \t]*$|(?:class|def|function|func|fn|pub fn|impl|interface)\b)")
_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_LINE = re.compile(r"\n\s*")
_SENTENCE = re.compile(r"[.!?;:][\"')\]]*\s+")
_SPACE = re.compile(r"\s+")
#: Break priorities (higher is preferred): heading > paragraph > sentence end > line end > word boundary.
_PRIORITIES = ((_SPACE, 1), (_LINE, 2), (_SENTENCE, 3), (_PARAGRAPH, 4))
_HEADING_PRIORITY = 5


class Chunker:
    """Splits text into chunks of at most ``size`` tokens of ``tokenizer`` with ``overlap`` tokens.

    A chunk ends at the best break in the second half of its window: a heading start, else a paragraph
    break, a sentence end, a line end, a word boundary, and only as a last resort inside a word. The
    next chunk repeats the last ``overlap`` tokens, unless the cut fell on a paragraph or heading.
    """

    def __init__(self, tokenizer: Any, size: int = 256, overlap: int = 32) -> None:
        """``tokenizer`` is a Hugging Face fast tokenizer (it must return character offsets)."""
        if size < 8:
            raise ValueError(f"chunk size must be at least 8 tokens, got {size}")
        if not 0 <= overlap < size // 2:
            raise ValueError(f"overlap must be between 0 and half the chunk size ({size // 2 - 1}), got {overlap}")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("chunking needs a fast (Rust) tokenizer that returns character offsets")
        self.tokenizer = tokenizer
        self.size = size
        self.overlap = overlap

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of every token of ``text`` (no special tokens)."""
        from transformers.utils import logging as hf_logging

        previous = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "sequence longer than the model maximum" is expected here
        try:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                                 return_attention_mask=False, return_token_type_ids=False)
        finally:
            hf_logging.set_verbosity(previous)
        return [(s, e) for s, e in enc["offset_mapping"] if e > s]

    def split(self, text: str) -> list[Chunk]:
        """Chunks of ``text`` in order; whitespace-only text gives none."""
        spans = self.offsets(text)
        n = len(spans)
        if n == 0:
            return []
        # priority[i]: how good a break before token i is. The token after a break is the first whose
        # end lies past the break position (BERT tokens start after a space, Llama's include it).
        ends = [e for _, e in spans]
        priority = bytearray(n + 1)
        for pattern, value in _PRIORITIES:
            for m in pattern.finditer(text):
                i = bisect.bisect_right(ends, m.end())
                if priority[i] < value:
                    priority[i] = value
        for m in _HEADING.finditer(text):
            i = bisect.bisect_right(ends, m.start())
            if i > 0:
                priority[i] = _HEADING_PRIORITY
        chunks: list[Chunk] = []
        s = 0
        while s < n:
            if n - s <= self.size:
                end = n
            else:
                lo, hi = s + max(1, self.size // 2), s + self.size
                best = max(priority[lo: hi + 1])
                end = hi if best == 0 else lo + max(i for i, p in enumerate(priority[lo: hi + 1]) if p == best)
            start_char, end_char = spans[s][0], spans[end - 1][1]
            piece = text[start_char:end_char]
            stripped = piece.strip()
            if stripped:
                lead = len(piece) - len(piece.lstrip())
                chunks.append(Chunk(len(chunks), start_char + lead, start_char + lead + len(stripped), stripped))
            if end >= n:
                break
            # Overlap carries context across a cut inside a paragraph; a cut at a paragraph or heading
            # starts the next chunk cleanly there.
            nxt = end - self.overlap if self.overlap and priority[end] < _PRIORITIES[-1][1] else end
            if nxt < end:  # start the overlap at its best boundary (a sentence start, else a word start)
                window = priority[nxt:end]
                best = max(window)
                if best:
                    nxt += window.index(best)
            s = max(nxt, s + 1)
        return chunks

