"""Benchmark harness: data loaders, mteb metric plumbing on tiny hand-checkable tasks, the --quick path."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import spearmanr

from lganna_rag.benchmarks.models import WordLlamaStatic
from lganna_rag.benchmarks.quality import build_task, evaluate_task
from lganna_rag.benchmarks.tasks import (
    SHARED_TASKS,
    SharedTask,
    load_classification,
    load_clustering,
    load_pairs,
    load_reranking,
    load_retrieval,
    read_qrels,
)
from lganna_rag.data import DataFormatError
from lganna_rag.metrics import ndcg_at_k


@pytest.fixture(scope="module")
def wordllama():
    return WordLlamaStatic()


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


# ---------------------------------------------------------------------------- loaders
def test_every_shared_task_folder_loads(data_root):
    for task in SHARED_TASKS:
        folder = data_root / task.folder
        if task.task_type == "retrieval":
            data = load_retrieval(task.folder)
            assert data.queries and data.corpus and set(data.queries) == set(data.qrels)
        elif task.task_type == "reranking":
            assert load_reranking(folder).queries
        elif task.task_type == "sts":
            assert len(load_pairs(folder, "score")["score"]) >= 100
        elif task.task_type == "pair_classification":
            assert set(load_pairs(folder, "label")["label"]) == {0, 1}
        elif task.task_type == "classification":
            splits = load_classification(folder)
            assert splits["train"]["text"] and splits["test"]["text"]
        else:
            sets = load_clustering(folder)
            assert len(sets["sentences"][0]) == len(sets["labels"][0]) > 1000


def test_loader_errors_name_file_and_line(tmp_path):
    _write(tmp_path / "sts" / "test.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 1}, {"sentence1": "a", "score": 2}])
    with pytest.raises(DataFormatError, match=r"sts/test\.jsonl:2: missing key\(s\) \['sentence2'\]"):
        load_pairs(tmp_path / "sts", "score")
    _write(tmp_path / "sts2" / "test.jsonl", [{"sentence1": "a", "sentence2": "b", "score": "high"}])
    with pytest.raises(DataFormatError, match=r"sts2/test\.jsonl:1: score must be a number"):
        load_pairs(tmp_path / "sts2", "score")
    (tmp_path / "q.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n2\td2\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"q\.tsv:3: expected 3 tab-separated columns"):
        read_qrels(tmp_path / "q.tsv")
    _write(tmp_path / "clu" / "test.jsonl", [{"sentences": ["a", "b"], "labels": [1]}])
    with pytest.raises(DataFormatError, match=r"clu/test\.jsonl:1: 2 sentences but 1 labels"):
        load_clustering(tmp_path / "clu")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "test.jsonl").write_text("\n")
    with pytest.raises(DataFormatError, match="no rows"):
        load_pairs(tmp_path / "empty", "score")


def test_qrels_queries_must_exist(tmp_path):
    _write(tmp_path / "R" / "corpus.jsonl", [{"_id": "d1", "text": "x"}])
    _write(tmp_path / "R" / "queries.jsonl", [{"_id": "1", "text": "q"}])
    (tmp_path / "R" / "qrels").mkdir()
    (tmp_path / "R" / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n7\td1\t1\n")
    with pytest.raises(DataFormatError, match=r"query ids \['7'\] are not in queries\.jsonl"):
        load_retrieval("R", root=tmp_path)



@pytest.fixture()
def tiny_tasks(tmp_path):
    """A tiny retrieval task (non-MTEB name) and a tiny STS task under a temporary data root."""
    docs = ["the cat sat on the mat", "stock markets fell sharply", "a recipe for apple pie",
            "the rocket launched into orbit", "rain is expected tomorrow"]
    _write(tmp_path / "Cranfield" / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(docs)])
    _write(tmp_path / "Cranfield" / "queries.jsonl",
           [{"_id": "1", "text": "cat on a mat"}, {"_id": "2", "text": "space rocket orbit launch"}, {"_id": "3", "text": "weather"}])
    (tmp_path / "Cranfield" / "qrels").mkdir()
    (tmp_path / "Cranfield" / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n1\td0\t2\n2\td3\t1\n2\td1\t1\n3\td4\t1\n", encoding="utf-8")
    pairs = [("a man plays guitar", "a person plays a guitar", 4.8), ("a dog runs", "the stock market crashed", 0.1),
             ("kids play football", "children play soccer", 4.0), ("it is raining", "the sun is shining", 1.5),
             ("a woman cooks", "a lady is cooking food", 4.5), ("cars on a road", "a bird in a tree", 0.4)]
    _write(tmp_path / "STSBenchmark" / "test.jsonl", [{"sentence1": a, "sentence2": b, "score": s} for a, b, s in pairs])
    return tmp_path, docs, pairs


def test_mteb_retrieval_plumbing_matches_hand_computation(tiny_tasks, wordllama, monkeypatch):
    root, docs, _ = tiny_tasks
    monkeypatch.setenv("LGANNA_DATA", str(root))
    task = SharedTask("Cranfield", "retrieval")
    result = evaluate_task(wordllama, task)
    assert result["main_metric"] == "ndcg_at_10"
    data = load_retrieval("Cranfield", root=root)
    q = wordllama.embed(list(data.queries.values()))
    d = wordllama.embed(docs)
    run = {qid: {f"d{j}": float(s) for j, s in enumerate(row)} for qid, row in zip(data.queries, q @ d.T)}
    assert result["main_score"] == pytest.approx(100 * ndcg_at_k(run, data.qrels), abs=0.01)
    assert 0 < result["main_score"] <= 100


def test_mteb_sts_plumbing_matches_hand_computation(tiny_tasks, wordllama, monkeypatch):
    root, _, pairs = tiny_tasks
    monkeypatch.setenv("LGANNA_DATA", str(root))
    result = evaluate_task(wordllama, SharedTask("STSBenchmark", "sts", "STSBenchmark"))
    a, b = wordllama.embed([p[0] for p in pairs]), wordllama.embed([p[1] for p in pairs])
    expected = spearmanr((a * b).sum(axis=1), [p[2] for p in pairs]).statistic
    assert result["main_metric"] == "cosine_spearman"
    assert result["main_score"] == pytest.approx(100 * expected, abs=0.01)


def test_build_task_injects_local_data_into_mteb_objects(tiny_tasks):
    root, _, _ = tiny_tasks
    obj = build_task(SharedTask("STSBenchmark", "sts", "STSBenchmark"), root=root)
    assert obj.metadata.name == "STSBenchmark" and obj.data_loaded
    assert obj.dataset["default"]["test"].num_rows == 6
    local = build_task(SharedTask("Cranfield", "retrieval"), root=root)
    assert local.metadata.name == "Cranfield" and local.metadata.main_score == "ndcg_at_10"


# ---------------------------------------------------------------------------- --quick, CLI, report
@pytest.mark.needs_data
def test_quick_cli_runs_end_to_end_with_cache(tmp_path, mistral_dir):
    from lganna_rag.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["bench", "quality", "--models", "wordllama,bm25", "--quick", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    wl = json.loads((tmp_path / "wordllama.quick.json").read_text())
    assert set(wl["tasks"]) == {"SciFact", "TrecQA", "STSBenchmark", "Banking77", "TwentyNewsgroupsClustering", "MSRP"}
    assert all(0 < e["main_score"] <= 100 for e in wl["tasks"].values())
    assert wl["tasks"]["STSBenchmark"]["main_score"] > 60  # real static embeddings on real pairs
    bm25 = json.loads((tmp_path / "bm25.quick.json").read_text())
    assert set(bm25["tasks"]) == {"SciFact", "TrecQA"}  # BM25 only ranks

    # an encoder directory through LGAnnaMTEBModel with the embedding cache
    from lganna_rag.benchmarks.models import CachedLGAnnaModel
    from lganna_rag.benchmarks.quality import run_quality

    args = dict(tasks=["STSBenchmark"], quick=True, out_dir=tmp_path, cache_dir=tmp_path / "cache", progress=lambda s: None)
    first = run_quality([str(mistral_dir)], **args)
    second = run_quality([str(mistral_dir)], **args)
    label = next(iter(first))
    assert first[label]["tasks"]["STSBenchmark"]["main_score"] == second[label]["tasks"]["STSBenchmark"]["main_score"]
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2  # sentence1 side and sentence2 side, stored once
    model = CachedLGAnnaModel(str(mistral_dir), cache_dir=tmp_path / "cache")
    assert model.fingerprint == CachedLGAnnaModel(str(mistral_dir), cache_dir=None).fingerprint


def test_unknown_task_is_a_usage_error(tmp_path):
    from lganna_rag.cli import main

    res = CliRunner().invoke(main, ["bench", "quality", "--models", "wordllama", "--tasks", "NoSuchTask", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "unknown task 'NoSuchTask'" in res.output


def test_report_from_result_files(tmp_path):
    from lganna_rag.benchmarks.report import write_report

    def result(model, scores):
        return {"model": model, "quick": False, "tasks": {
            t: {"mteb_name": t if t != "Cranfield" else None, "type": ty, "main_metric": "m", "main_score": s}
            for t, (ty, s) in scores.items()}}

    (tmp_path / "minilm.json").write_text(json.dumps(result("minilm", {"SciFact": ("retrieval", 64.0), "Cranfield": ("retrieval", 30.0), "STSBenchmark": ("sts", 82.03)})))
    (tmp_path / "bm25.json").write_text(json.dumps(result("bm25", {"SciFact": ("retrieval", 66.0), "Cranfield": ("retrieval", 34.0)})))
    md = write_report(tmp_path).read_text()
    assert "| SciFact | retrieval | m | 64.00 | **66.00** |" in md
    assert "| **mean retrieval** | | | 47.00 | 50.00 |" in md
    assert "| STSBenchmark | 82.03 | 82.03 | +0.00 |" in md and "| SciFact | 64.00 | 64.51 | -0.51 |" in md
    assert (tmp_path / "quality_by_type.png").stat().st_size > 1000


def test_importing_the_benchmarks_leaves_the_environment_alone():
    """Only the `lganna-rag bench` entry point turns on HF offline mode, not an import of a benchmark module."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    code = ("import os, lganna_rag.benchmarks.quality, lganna_rag.benchmarks.speed, lganna_rag.benchmarks.parity; "
            "assert 'HF_HUB_OFFLINE' not in os.environ and 'HF_DATASETS_OFFLINE' not in os.environ")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)


@pytest.mark.needs_data
def test_bench_parity_writes_its_result_file(tmp_path):
    from lganna_rag.cli import main

    out = tmp_path / "parity.json"
    res = CliRunner().invoke(main, ["bench", "parity", "--n", "40", "--repeats", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    written = json.loads(out.read_text())
    assert written["sentences"] == 40 and written["cosine_min"] > 0.9999 and written["versions"]["torch"]
    assert f"wrote {out}" in res.output


def test_an_encoders_only_speed_run_keeps_earlier_store_rows_with_their_own_run(tmp_path, monkeypatch):
    """speed.json never shows a row under another run's versions: carried rows name the run that measured them."""
    from lganna_rag.benchmarks import speed
    from lganna_rag.benchmarks.report import speed_markdown

    old_run = {"versions": {"torch": "0.0-old"}, "cpu_threads": 7, "matmul_gflops": 1.0, "real_vectors": 10, "queries": 5}
    row = {"store": "faiss-flat", "vectors": 10, "upsert_s": 0.1, "query_p50_ms": 1.0, "query_p99_ms": 2.0, "recall_at_10": 1.0}
    legacy = {**row, "store": "qdrant-edge", "measured_in_earlier_run": True}  # whose run is unknown: dropped
    (tmp_path / "speed.json").write_text(json.dumps({**old_run, "texts": 3, "encoders": {}, "vector_stores": [row, legacy]}))
    fake = {"model": "minilm", "texts": 3, "tokens": 30, "seconds": 1.0, "texts_per_s": 3.0, "tokens_per_s": 30.0,
            "time_to_first_embedding_s": 0.5, "peak_rss_mb": 100.0, "non_embedding_params": 10}
    monkeypatch.setattr(speed, "matmul_gflops", lambda: 50.0)
    monkeypatch.setattr(speed, "measure_encoders", lambda models, n: {"minilm": dict(fake)})
    result = speed.run_speed(["minilm"], n=3, sizes=(), out_dir=tmp_path, progress=lambda s: None)
    written = json.loads((tmp_path / "speed.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert written["vector_stores"] == [{**row, "measured_in": old_run}]
    assert written["versions"]["torch"] != "0.0-old"  # this run's versions, for this run's rows only
    md = speed_markdown(written)
    assert "| faiss-flat * | 10 |" in md and "* measured in an earlier run (7 threads; torch 0.0-old)." in md
    # a second encoders-only run keeps the row's own run, not the first encoders-only run
    again = speed.run_speed(["minilm"], n=3, sizes=(), out_dir=tmp_path, progress=lambda s: None)
    assert again["vector_stores"] == [{**row, "measured_in": old_run}]


@pytest.mark.needs_data
def test_index_bench_writes_every_overhead_repeat_itself(tmp_path, mistral_dir):
    """Repeats are runs of the command, all in the file it writes (no hand-merged results)."""
    from lganna_rag.benchmarks.index_bench import main as index_bench

    out = tmp_path / "index_bench.json"
    index_bench(["--model", str(mistral_dir), "--sections", "overhead", "--overhead-docs", "4", "--repeats", "2",
                 "--threads", "1", "--out", str(out)])
    runs = json.loads(out.read_text())["overhead"]
    assert len(runs) == 2 and all(r["files"] == 4 and r["chunks"] >= 4 for r in runs)
    rows = [line for line in out.with_suffix(".md").read_text().splitlines() if line.startswith("| 4 |")]
    assert len(rows) == 2


def test_result_file_names_keep_hybrid_and_plain_runs_apart_from_the_dense_model():
    """``hybrid:DIR`` once wrote DIR's own file name and overwrote the dense run's results."""
    from lganna_rag.benchmarks.quality import _model_label

    assert _model_label("runs/x/final") == "final"
    assert _model_label("hybrid:runs/x/final") == "hybrid-final"
    assert _model_label("plain:runs/x/final") == "plain-final"
    assert _model_label("hybrid:lganna-minilm") == "hybrid-lganna-minilm"
    assert _model_label("minilm") == "minilm"
