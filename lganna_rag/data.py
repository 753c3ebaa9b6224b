"""Where the shared evaluation and training data lives, and a strict JSONL reader."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

#: Environment variable naming the data folder (default ``../shared/data``).
DATA_ENV = "LGANNA_DATA"


class DataFormatError(ValueError):
    """A data file is malformed; the message names the file and the line."""


def data_dir(must_exist: bool = True) -> Path:
    """The data folder: ``$LGANNA_DATA`` or ``../shared/data`` relative to the working directory."""
    path = Path(os.environ.get(DATA_ENV, "../shared/data")).expanduser().resolve()
    if must_exist and not path.is_dir():
        raise FileNotFoundError(
            f"data folder {path} does not exist; set {DATA_ENV} to the folder holding the shared data "
            f"(the one with MANIFEST.md)"
        )
    return path


def read_jsonl(path: str | os.PathLike, required: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """Yield one dict per non-empty line; bad JSON or a missing ``required`` key raises ``DataFormatError``."""
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(row, dict):
                raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise DataFormatError(f"{path}:{lineno}: missing key(s) {missing}; found {sorted(row)}")
            yield row
