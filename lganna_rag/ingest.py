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
from typing import Any, Iterable, Sequence

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


# ------------------------------------------------------------------------------------------ discovery
@dataclass(frozen=True)
class FileRef:
    """A file to index: its real path, the root it belongs to and its path relative to that root."""

    path: Path
    root: Path
    source: str


@dataclass(frozen=True)
class Skip:
    """A file that was not indexed, and why (``failed`` marks errors rather than policy skips)."""

    source: str
    reason: str
    root: Path | None = None
    failed: bool = False


@dataclass
class Discovery:
    """What ``discover`` found: files to load, skips, and the folder roots whose other chunks may be pruned."""

    files: list[FileRef] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    folder_roots: list[Path] = field(default_factory=list)


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


def discover(
    paths: Sequence[str | os.PathLike],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> Discovery:
    """Expand folders, files and glob patterns into files to index.

    Folders are walked recursively (sorted, so runs are deterministic); their files are relative to the
    folder, which becomes a *folder root* (chunks of its files that no longer exist may be pruned). A
    file argument's root is its folder. ``include`` keeps only matching files (and admits unknown
    extensions as text); ``exclude`` adds to :data:`DEFAULT_EXCLUDES`. Raises ``FileNotFoundError``
    for a path that does not exist or a pattern that matches nothing.
    """
    found = Discovery()
    excludes = (*DEFAULT_EXCLUDES, *exclude)
    seen: set[Path] = set()
    for raw in paths:
        text = os.fspath(raw)
        if glob.has_magic(text) and not Path(text).exists():
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not matches:
                raise FileNotFoundError(f"pattern {text!r} matches no files")
            base = _glob_base(os.path.expanduser(text))
            for m in matches:
                match = Path(m)
                if match.is_symlink() and not _inside(match.resolve(), base):
                    found.skipped.append(Skip(m, f"symlink points outside {base} (-> {match.resolve()}); not followed"))
                elif match.is_file():
                    _add_file(found, match, include, excludes, seen, explicit=False)
            continue
        path = Path(text).expanduser()
        if not path.exists() and not path.is_symlink():
            raise FileNotFoundError(f"path {text!r} does not exist")
        if path.is_dir():
            root = path.resolve()
            found.folder_roots.append(root)
            _walk(found, root, root, include, excludes, seen, {root})
        elif path.is_file():
            _add_file(found, path, include, excludes, seen, explicit=True)
        else:
            found.skipped.append(Skip(text, "not a regular file or folder (broken symlink, device or pipe)"))
    return found


def _glob_base(pattern: str) -> Path:
    """The folder a glob pattern searches: its leading parts without wildcards."""
    parts = Path(pattern).parts
    fixed = parts[: next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]
    return Path(*fixed).resolve() if fixed else Path.cwd()


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _add_file(found: Discovery, path: Path, include: Sequence[str], excludes: Sequence[str], seen: set[Path],
              *, explicit: bool) -> None:
    real = path.resolve()
    root = real.parent
    ref = FileRef(real, root, real.name)
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
        found.skipped.append(Skip(_rel(folder, root) + "/", f"folder not readable: {exc.strerror or exc}", root, failed=True))
        return
    for entry in entries:
        path = Path(entry.path)
        rel = _rel(path, root)
        if _matches(rel, excludes):
            continue
        try:
            is_link = entry.is_symlink()
            if is_link:
                target = Path(os.path.realpath(path))
                if not target.exists():
                    found.skipped.append(Skip(rel, f"broken symlink (-> {os.readlink(path)})", root))
                    continue
                if not _inside(target, root):
                    found.skipped.append(Skip(rel, f"symlink points outside the indexed root (-> {target}); not followed", root))
                    continue
            else:
                target = path
            st = path.stat()
        except OSError as exc:
            found.skipped.append(Skip(rel, f"cannot stat: {exc.strerror or exc}", root, failed=True))
            continue
        if stat.S_ISDIR(st.st_mode):
            real = target.resolve()
            if real in ancestors or (is_link and real in seen):
                found.skipped.append(Skip(rel + "/", f"symlink loop (-> {real}); not followed", root))
                continue
            seen.add(real)
            _walk(found, root, path, include, excludes, seen, ancestors | {real})
        elif stat.S_ISREG(st.st_mode):
            if include:
                if not _matches(rel, include):
                    continue
            elif not is_supported(entry.name):
                found.skipped.append(Skip(rel, f"unsupported file type ({Path(entry.name).suffix or 'no extension'}); "
                                               f"use --include to index it as text", root))
                continue
            found.files.append(FileRef(path, root, rel))
        else:
            found.skipped.append(Skip(rel, "not a regular file (device, socket or pipe)", root))


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
    head = data[:8192]
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False
    return b"\x00" in head


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            raise ValueError("the PDF is encrypted")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"could not read PDF: {exc}") from exc
    return "\n\n".join(p for p in pages if p)


def load_file(ref: FileRef, max_file_mb: float = DEFAULT_MAX_FILE_MB) -> LoadedFile | Skip:
    """Read and decode one file; return a :class:`Skip` (with its reason) instead of raising."""
    try:
        size = ref.path.stat().st_size
        if max_file_mb and size > max_file_mb * 1024 * 1024:
            return Skip(ref.source, f"larger than --max-file-mb {max_file_mb:g} ({size / 1024 / 1024:.1f} MB)", ref.root)
        with open(ref.path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return Skip(ref.source, f"cannot read: {exc.strerror or exc}", ref.root, failed=True)
    file_hash = hashlib.sha256(data).hexdigest()
    if not data.strip():
        return Skip(ref.source, "empty file", ref.root)
    suffix = ref.path.suffix.lower()
    warnings: list[str] = []
    if suffix in PDF_EXTENSIONS:
        if not data.startswith(b"%PDF"):
            return Skip(ref.source, "not a PDF file (no %PDF header)", ref.root, failed=True)
        try:
            text = _pdf_text(ref.path)
        except ValueError as exc:
            return Skip(ref.source, str(exc), ref.root, failed=True)
        if not text.strip():
            return Skip(ref.source, "PDF has no extractable text (scanned images?)", ref.root)
        return LoadedFile(ref, text, file_hash)
    if _looks_binary(data):
        return Skip(ref.source, "binary file", ref.root)
    text, warning = decode_text(data)
    if warning:
        warnings.append(warning)
    if suffix in HTML_EXTENSIONS:
        text = html_to_text(text)
    if not text.strip():
        return Skip(ref.source, "no text content", ref.root)
    return LoadedFile(ref, text, file_hash, warnings)


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
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def chunk_id(path: str, index: int, text: str) -> str:
    """Deterministic chunk id: UUIDv5 of the file path, chunk index and chunk content hash."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{path}\x00{index}\x00{content_hash(text)}"))


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

