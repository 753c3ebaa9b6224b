"""``where`` filters: one check (lganna_rag.filters.check_where) for the library, the CLI and the server."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from lganna_rag.filters import INT64_MAX, INT64_MIN, check_where

ACCEPTED = [
    ({"source": "guide/intro.md"}, {"source": "guide/intro.md"}),
    ({"chunk": 3}, {"chunk": 3}),
    ({"chunk": INT64_MAX, "start": INT64_MIN}, {"chunk": INT64_MAX, "start": INT64_MIN}),
    ({"source": ["a.md", "b.md"]}, {"source": ["a.md", "b.md"]}),
    ({"source": ("a.md",)}, {"source": ["a.md"]}),  # a tuple becomes a list
    ({"chunk": [0, 1]}, {"chunk": [0, 1]}),
    ({"meta.author": "x", "tags[]": "t", '"my key"': "v", "a-b_c": "y", "é日本": "z", "a.b[0].c": 1},
     {"meta.author": "x", "tags[]": "t", '"my key"': "v", "a-b_c": "y", "é日本": "z", "a.b[0].c": 1}),
    ({}, None),
    (None, None),
]


@pytest.mark.parametrize("where, want", ACCEPTED)
def test_accepted_filters_pass_through(where, want) -> None:
    assert check_where(where) == want


REJECTED = [
    ({"chunk": True}, "'chunk': true (a boolean)"),  # would silently match chunk 1 in the engine
    ({"chunk": False}, "'chunk': false (a boolean)"),
    ({"chunk": 2**63}, "does not fit in 64 bits"),
    ({"chunk": -(2**63) - 1}, "does not fit in 64 bits"),
    ({"chunk": None}, "'chunk': null"),
    ({"chunk": 1.5}, "'chunk': 1.5 (a non-integer number)"),
    ({"chunk": 1.0}, "'chunk': 1.0 (a non-integer number)"),
    ({"source": {"$ne": "x"}}, "operators such as"),
    ({"source": [{"a": 1}]}, "'source': a list of objects"),
    ({"source": [["a"]]}, "'source': a list of lists"),
    ({"source": []}, "'source': an empty list"),
    ({"source": ["a.md", 1]}, "mixes strings and integers"),
    ({"chunk": [1, True]}, "'chunk': true (a boolean)"),
    ({"": "x"}, "must be a non-empty string"),
    ({"  ": "x"}, "must be a non-empty string"),
    ({"$or": ["a"]}, "operators are not supported"),
    ({"a b": "x"}, "'a b' is not a payload field name"),  # the engine says "invalid JSON path a b"
    ({"a[": "x"}, "'a[' is not a payload field name"),
    ({"a.": "x"}, "'a.' is not a payload field name"),
    ({'"a': "x"}, "is not a payload field name"),
    ({"a[-1]": "x"}, "is not a payload field name"),
    ({"source": "\ud800"}, "lone surrogate"),
    ({"\udcff": "x"}, "lone surrogate"),
    ("source=a.md", "must be an object"),
    (["source"], "must be an object"),
]


@pytest.mark.parametrize("where, message", REJECTED)
def test_bad_filters_are_value_errors_naming_the_key(where, message) -> None:
    with pytest.raises(ValueError) as info:
        check_where(where)
    text = str(info.value)
    assert message in text
    if "payload field name" not in text and "non-empty string" not in text and "lone surrogate" not in text:
        assert "a non-empty list of strings or of integers" in text  # the accepted forms are spelled out


@pytest.mark.parametrize("args, message", [
    (["--filter", "chunk=99999999999999999999999"], "does not fit in 64 bits"),  # was a traceback
    (["--filter", "chunk=" + "9" * 5000], "does not fit in 64 bits"),  # past Python's int-from-string limit
    (["--filter", "chunk=9223372036854775808"], "does not fit in 64 bits"),
    (["--filter", "chunk=1", "--filter", "chunk=x"], "mixes strings and integers"),
    (["--filter", "my key=x"], "'my key' is not a payload field name"),
    (["--filter", "$or=x"], "operators are not supported"),
    (["--filter", "source"], "expected KEY=VALUE"),
])
def test_cli_bad_filter_is_a_usage_error(tmp_path, args, message) -> None:
    from lganna_rag.cli import main

    result = CliRunner().invoke(main, ["search", "q", "--path", str(tmp_path / "store"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "--filter" in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_filters_parse_integers_and_repeats() -> None:
    from lganna_rag.cli import _parse_filters

    assert _parse_filters(("chunk=1", "chunk=-2", "source=a.md", "source=b.md", "start=007")) == {
        "chunk": [1, -2], "source": ["a.md", "b.md"], "start": 7}
    assert _parse_filters(("source=12", "chunk=²", "chunk=--5")) == {"source": "12", "chunk": ["²", "--5"]}
    assert _parse_filters(()) is None


def test_accepted_keys_reach_the_engine_without_errors(mistral, tmp_path) -> None:
    """Every key form check_where accepts is a path the Qdrant engine reads (no 'invalid JSON path')."""
    from lganna_rag import Index

    with Index(tmp_path / "store", collection="docs", encoder=mistral) as index:
        index.add_texts(["alpha beta gamma", "delta epsilon"],
                        metadatas=[{"source": "a.md", "my key": "v", "tags": ["t1", "t2"], "meta": {"author": "x"},
                                    "é日本": "z", "a-b": "y"}, {"source": "b.md"}])
        for where, want in [({"source": ["a.md", "b.md"]}, 2), ({'"my key"': "v"}, 1), ({"tags[]": "t2"}, 1),
                            ({"meta.author": "x"}, 1), ({"é日本": "z"}, 1), ({"a-b": "y"}, 1), ({"chunk": INT64_MAX}, 0)]:
            assert index.count(check_where(where)) == want, where
