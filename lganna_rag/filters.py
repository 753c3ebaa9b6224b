"""Checking ``where`` filters (payload key -> value or list of values) before they reach the Qdrant engine.

One rule set for every entry point (``Index.search(where=...)`` callers, ``lganna-rag search --filter``,
``POST /v1/search``'s ``filter``), so bad input gets one clear message naming the key and the accepted forms
instead of the engine's internal text, a traceback, or a silent wrong match (``True`` matching chunk 1).

Accepted: ``{"source": "guide/intro.md"}``, ``{"chunk": 3}``, ``{"source": ["a.md", "b.md"]}`` (any of).
A key is a payload field, or a nested path as the engine reads it: ``meta.author``, ``tags[]``, ``"my key"``
(double quotes around a key with other characters).
"""

from __future__ import annotations

import re
from typing import Any, Union

#: A checked filter value: one string, one integer, or a non-empty list of strings or of integers.
FilterValue = Union[str, int, list[str], list[int]]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

ACCEPTED = ("a string, an integer (from -2^63 to 2^63-1) or a non-empty list of strings or of integers, "
            'e.g. {"source": "guide/intro.md"}, {"chunk": 3} or {"source": ["a.md", "b.md"]}')

#: One segment of a payload path: a bare key (letters, digits, ``_``, ``-``) or a double-quoted key, then
#: any number of ``[]`` / ``[N]`` array steps.
_SEGMENT = re.compile(r'(?:[\w-]+|"[^"]+")(?:\[[0-9]*\])*')


def _is_segment(segment: str) -> bool:
    if not _SEGMENT.fullmatch(segment):
        return False
    bare = segment.split("[", 1)[0]
    # ``\w`` also takes ``_``-like connector punctuation the engine refuses; letters and digits only besides _ and -
    return bare.startswith('"') or all(c.isalnum() or c in "_-" for c in bare)


def _split_path(key: str) -> list[str] | None:
    """The dot-separated segments of ``key`` (dots inside double quotes do not split); ``None`` if quotes are unbalanced."""
    parts, current, quoted = [], [], False
    for c in key:
        if c == '"':
            quoted = not quoted
        if c == "." and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    if quoted:
        return None
    parts.append("".join(current))
    return parts


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"filter key {key!r}: a filter key must be a non-empty string (a payload field such as "
                         f"'source')")
    _check_text(key, f"filter key {key!r}")
    if key.startswith("$"):
        raise ValueError(f"filter key {key!r}: operators are not supported; a filter is an object of payload field "
                         f"-> value, where a value is {ACCEPTED}")
    parts = _split_path(key)
    if parts is None or not all(_is_segment(p) for p in parts):
        hint = f' (put a key with other characters in double quotes: \'"{key}"\')' if '"' not in key else ""
        raise ValueError(f"filter key {key!r} is not a payload field name: use letters, digits, '_' and '-', "
                         f"'.' for a nested field and '[]' for a list{hint}")
    return key


def _check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} has a lone surrogate ({text[exc.start]!r} at position {exc.start}): "
                         f"it is not valid Unicode text") from None


def _show(value: Any) -> str:
    """``value`` as JSON would spell it, shortened."""
    shown = {True: "true", False: "false", None: "null"}.get(value, None) if isinstance(value, (bool, type(None))) \
        else repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _check_scalar(key: str, value: Any) -> str | int:
    if isinstance(value, str):
        _check_text(value, f"filter value of {key!r}")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"filter key {key!r}: the integer {value} does not fit in 64 bits; a value is {ACCEPTED}")
        return int(value)
    if isinstance(value, dict):
        what = "an object (operators such as {\"$ne\": ...} are not supported)"
    elif isinstance(value, bool):
        what = f"{_show(value)} (a boolean)"
    elif value is None:
        what = "null"
    elif isinstance(value, float):
        what = f"{_show(value)} (a non-integer number)"
    else:
        what = f"{_show(value)} ({type(value).__name__})"
    raise ValueError(f"filter key {key!r}: {what} is not accepted; a value is {ACCEPTED}")


def check_value(key: str, value: Any) -> FilterValue:
    """``value`` of filter ``key`` as the store takes it (a list for a tuple or set); raises ValueError naming the key."""
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else list(value)
        if not items:
            raise ValueError(f"filter key {key!r}: an empty list matches nothing; a value is {ACCEPTED}")
        checked = []
        for item in items:
            if isinstance(item, (list, tuple, set, frozenset, dict)):
                raise ValueError(f"filter key {key!r}: a list of {'objects' if isinstance(item, dict) else 'lists'} "
                                 f"is not accepted; a value is {ACCEPTED}")
            checked.append(_check_scalar(key, item))
        if len({type(x) for x in checked}) > 1:
            raise ValueError(f"filter key {key!r}: the list mixes strings and integers; a value is {ACCEPTED}")
        return checked  # type: ignore[return-value]
    return _check_scalar(key, value)


def check_where(where: Any) -> dict[str, FilterValue] | None:
    """A checked copy of the filter ``where`` (``None`` for ``None`` or ``{}``); raises ValueError naming the bad key.

    Keys are payload fields (or nested paths: ``meta.author``, ``tags[]``, ``"my key"``); a value is a string,
    an integer that fits in signed 64 bits (not a boolean), or a non-empty list of strings or of integers.
    ``null``, other numbers, objects (operators such as ``{"$ne": ...}``) and lists of objects are refused.
    """
    if where is None:
        return None
    if not isinstance(where, dict):
        raise ValueError(f"a filter must be an object of payload field -> value, got {_show(where)}; "
                         f"a value is {ACCEPTED}")
    checked = {_check_key(key): check_value(key, value) for key, value in where.items()}
    return checked or None
