"""Test helpers: real inputs (a text PDF, folders of documents), a non-root reader, store snapshots."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

#: Four documents and, in the same order, a query that each one answers (and none of the others).
DOCS = ["Green tea should be brewed with water at about 80 degrees Celsius for two minutes.",
        "Kubernetes restarts a pod when its liveness probe fails repeatedly.",
        "The Eiffel Tower is in Paris and was finished in 1889.",
        "A man is playing an acoustic guitar on a small stage."]
QUERIES = ["what water temperature for brewing green tea", "why does my pod keep restarting",
           "when was the eiffel tower built", "someone performing music"]

TOPICS = {
    "volcanoes.md": "# Volcanoes\n\nMagma rises through the crust and erupts as lava, ash and volcanic gas. "
                    "Shield volcanoes have gentle slopes built from fluid basalt lava flows.",
    "chess.txt": "Chess openings\n\nThe Sicilian Defence answers 1.e4 with c5 and leads to sharp, unbalanced "
                 "positions where Black fights for the centre from the side.",
    "espresso.md": "# Espresso\n\nEspresso is brewed by forcing hot water at nine bars of pressure through finely "
                   "ground coffee for about 25 seconds, giving a small concentrated shot with crema.",
}


def text_pdf(text: str) -> bytes:
    """A valid one-page PDF whose page shows ``text`` in Helvetica (pypdf extracts it)."""
    stream = f"BT /F1 12 Tf 72 712 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def write_topics(folder: Path) -> Path:
    """Write the three :data:`TOPICS` documents into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in TOPICS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def write_corpus(folder: Path, n_files: int, words: int, seed: int = 0, vocab: list[str] | None = None) -> Path:
    """``n_files`` markdown files of ``words`` pseudo-random words in paragraphs (deterministic)."""
    rng = random.Random(seed)
    vocab = vocab or [f"{a}{b}" for a in ("re", "con", "pro", "sub", "in", "ex", "de", "tra") for b in
                      ("ton", "mar", "lis", "vek", "dor", "pia", "sul", "gen", "fal", "quo")]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        paragraphs = []
        for _ in range(max(1, words // 60)):
            paragraphs.append(" ".join(rng.choice(vocab) for _ in range(60)) + ".")
        (folder / f"doc{i:03d}.md").write_text(f"# Document {i}\n\n" + "\n\n".join(paragraphs), encoding="utf-8")
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Run a test module with one torch thread (import this fixture into the module to use it).

    The models in these tests are small; on a busy machine, oversubscribed intra-op threads make them
    several times slower than a single thread.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def preload(*packages: str) -> None:
    """Import every submodule of ``packages`` now: code run as another user may import them lazily (pypdf imports
    ``pypdf.filters`` inside ``PdfReader``), and that user may not be able to read this virtualenv (a clone in a
    private folder, like a home directory or ``mktemp -d``)."""
    import importlib
    import pkgutil

    for name in packages:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, name + "."):
            with contextlib.suppress(Exception):
                importlib.import_module(info.name)


@contextlib.contextmanager
def as_other_user() -> Iterator[None]:
    """Run the block as user ``nobody`` when we are root (root reads any file), else as ourselves. What the block
    imports must already be imported (see :func:`preload`): nobody may not be able to read the virtualenv."""
    if os.geteuid() != 0:
        yield
        return
    preload("pypdf", "qdrant_edge")
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def snapshot(index: Any) -> dict[str, tuple[dict, np.ndarray]]:
    """Every point of an edge collection: id -> (payload, dense vector), read straight from the shard."""
    import qdrant_edge as qe

    shard = index.backend._open()
    out, offset = {}, None
    while True:
        records, offset = shard.scroll(qe.ScrollRequest(offset=offset, limit=1000, with_payload=True, with_vector=["dense"]))
        for r in records:
            out[str(r.id)] = (dict(r.payload), np.asarray(r.vector["dense"], dtype=np.float32))
        if offset is None:
            return out


def assert_same_points(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for pid in a:
        assert a[pid][0] == b[pid][0]
        np.testing.assert_allclose(a[pid][1], b[pid][1], atol=1e-5)


def assert_matches_clean_run(index: Any, docs: Path, encoder: Any, clean_store: Path, **settings: Any) -> None:
    """Close ``index`` and check it holds exactly the points a fresh index of ``docs`` holds."""
    from lganna_rag.index import Index

    state = snapshot(index)
    index.close()
    with Index(clean_store, encoder=encoder) as clean:
        clean.add_files([docs], **settings)
        assert_same_points(state, snapshot(clean))
