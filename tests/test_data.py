import pytest

from lganna_rag.data import DataFormatError, data_dir, read_jsonl


def test_data_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LGANNA_DATA", str(tmp_path))
    assert data_dir() == tmp_path.resolve()
    monkeypatch.setenv("LGANNA_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="LGANNA_DATA"):
        data_dir()


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n', encoding="utf-8")
    rows = read_jsonl(path)
    assert next(rows) == {"a": 1}
    with pytest.raises(DataFormatError, match=r"x\.jsonl:3: invalid JSON"):
        next(rows)


def test_read_jsonl_required_keys(tmp_path):
    path = tmp_path / "y.jsonl"
    path.write_text('{"query": "q"}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"y\.jsonl:1: missing key\(s\) \['positive'\]"):
        list(read_jsonl(path, required=("query", "positive")))


def test_real_training_file_reads(data_root):
    rows = list(read_jsonl(data_root / "train" / "msrp.jsonl", required=("query", "positive")))
    assert len(rows) > 1000
