"""Model selection without test splits: adapter soups, held-out training rows, dev-split tasks."""

import json
import random

import numpy as np
import pytest

from lganna_rag import LGAnnaEncoder
from lganna_rag.models import bundled_weights_dir

TEXTS = ["What causes high blood pressure?", "Hypertension is often caused by a diet high in salt.",
         "The stock market fell sharply on Tuesday."]


@pytest.fixture(scope="module")
def shipped():
    return bundled_weights_dir() / "lganna-minilm"


def test_a_soup_of_one_adapter_at_weight_one_gives_its_vectors_and_at_zero_the_base(tmp_path, shipped, minilm):
    from lganna_rag.training.select import soup

    one = LGAnnaEncoder.from_pretrained(soup(tmp_path / "one", shipped, [(shipped, 1.0)]))
    zero = LGAnnaEncoder.from_pretrained(soup(tmp_path / "zero", shipped, [(shipped, 0.0)]))
    half = LGAnnaEncoder.from_pretrained(soup(tmp_path / "half", shipped, [(shipped, 0.25), (shipped, 0.25)]))
    full = LGAnnaEncoder.from_pretrained(shipped)
    np.testing.assert_allclose(one.encode(TEXTS), full.encode(TEXTS), atol=2e-5)
    np.testing.assert_allclose(zero.encode(TEXTS), minilm.encode(TEXTS), atol=2e-5)
    q_one, q_full = one.encode_queries(TEXTS[:1], task="retrieval"), full.encode_queries(TEXTS[:1], task="retrieval")
    np.testing.assert_allclose(q_one, q_full, atol=2e-5)  # the prompt and its exclusion from pooling survive
    # two quarter-weight copies: a model strictly between the base and the adapter
    a, b, h = full.encode(TEXTS), minilm.encode(TEXTS), half.encode(TEXTS)
    assert np.all((a * h).sum(1) > (a * b).sum(1)) and np.all((b * h).sum(1) > (a * b).sum(1))
    record = json.loads((tmp_path / "half" / "lganna.json").read_text())["provenance"]["soup"]
    assert [p["weight"] for p in record] == [0.25, 0.25]
    # and it still ranks: the related sentence above the unrelated one
    s = h[0] @ h[1:].T
    assert s[0] > s[1]


def test_soup_refuses_adapters_of_different_shapes(tmp_path, shipped):
    from lganna_rag.training.select import soup

    other = tmp_path / "other"
    other.mkdir()
    cfg = json.loads((shipped / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps(dict(cfg, target_modules=["query"])))
    (other / "adapter_model.safetensors").write_bytes((shipped / "adapter_model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="different modules"):
        soup(tmp_path / "x", shipped, [(shipped, 1.0), (other, 1.0)])


def test_held_out_queries_are_never_training_rows_of_that_config(data_root):
    from lganna_rag.training.data import source
    from lganna_rag.training.select import heldout_retrieval
    from lganna_rag.training.trainer import TrainConfig, split_rows

    cfg = TrainConfig(name="t", output_dir="unused", base_model="minilm", sources=["covidqa", "stsb"],
                      max_examples_per_source=300, dev_examples_per_source=10)
    held = heldout_retrieval(cfg, n_queries=40, n_distractors=50)
    assert set(held.queries) == {"covidqa"}  # symmetric sources are not retrieval
    _, train, _ = split_rows(cfg, [source(s) for s in cfg.sources], random.Random(cfg.seed))[0]
    trained = {ex.query for ex in train}
    task, pairs = held.queries["covidqa"]
    assert len(pairs) == 40 and not trained & {q for q, _ in pairs}
    assert held.sizes["covidqa"] == {"queries": 40, "distractors": 50}
    assert len(held.corpus) <= 90 and task.task_type == "retrieval"
    # a larger config holds out a subset of what a smaller one does (same seed and sources)
    bigger = TrainConfig(**{**cfg.__dict__, "max_examples_per_source": 600})
    big_pairs = {q for q, _ in heldout_retrieval(bigger, n_queries=40, n_distractors=0).queries["covidqa"][1]}
    _, small_train, _ = split_rows(cfg, [source(s) for s in cfg.sources], random.Random(cfg.seed))[0]
    assert not big_pairs & {ex.query for ex in small_train}


def test_dev_tasks_read_dev_splits_and_never_the_test_file(data_root):
    from lganna_rag.benchmarks.tasks import DEV_TASKS, load_classification, load_pairs, load_reranking, shared_task

    assert shared_task("WikiQA@dev").split == "dev" and shared_task("WikiQA").split == "test"
    assert {t.key for t in DEV_TASKS} >= {"WikiQA@dev", "STSBenchmark@dev", "SST2@validation"}
    dev = load_reranking(data_root / "WikiQA", split="dev")
    test = load_reranking(data_root / "WikiQA")
    assert len(dev.queries) == 122 and not set(dev.queries.values()) & set(test.queries.values())
    sts = load_pairs(data_root / "STSBenchmark", "score", split="dev")
    assert len(sts["score"]) == 1500
    sst = load_classification(data_root / "SST2", split="validation")
    assert len(sst["test"]["text"]) == 872 and len(sst["train"]["text"]) == 6920


def test_training_collections_pair_real_questions_with_their_passages(data_root):
    from lganna_rag.benchmarks.tasks import load_training_collection

    data = load_training_collection("covidqa", n_docs=300, n_queries=20)
    assert len(data.queries) == 20 and len(data.corpus) <= 300
    for qid, rels in data.qrels.items():
        (doc,) = rels
        assert data.corpus[doc]["text"]  # each question's own passage is in the corpus


def test_benchmark_cache_tells_adapters_with_the_same_config_apart(tmp_path, shipped):
    """Two adapters over the same base with identical JSON files must not share cached embeddings."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from lganna_rag.benchmarks.models import CachedLGAnnaModel

    other = tmp_path / "other"
    shutil.copytree(shipped, other)
    weights = load_file(str(shipped / "adapter_model.safetensors"))
    save_file({k: v * 0.5 if ".lora_B." in k else v for k, v in weights.items()}, str(other / "adapter_model.safetensors"))
    a = CachedLGAnnaModel(str(shipped), cache_dir=tmp_path / "cache")
    b = CachedLGAnnaModel(str(other), cache_dir=tmp_path / "cache")
    assert a.fingerprint != b.fingerprint
    assert not np.allclose(a.encoder.encode(TEXTS), b.encoder.encode(TEXTS), atol=1e-4)


def test_bundling_a_chosen_checkpoint_records_its_step_dev_scores_wall_time_and_selection(tmp_path, shipped):
    """The adapter of another step of the same run replaces the export's; lganna.json says which and why."""
    import shutil

    from lganna_rag.training.bundle import bundle

    run = tmp_path / "run"
    export, ckpt = run / "final", run / "checkpoint-400"
    shutil.copytree(shipped, export)
    ckpt.mkdir()
    other = tmp_path / "soup"
    from lganna_rag.training.select import soup

    soup(other, shipped, [(shipped, 0.5)])  # stands for another step's adapter: a different real adapter
    shutil.copy2(other / "adapter_model.safetensors", ckpt / "adapter_model.safetensors")
    shutil.copy2(other / "adapter_config.json", export / "adapter_config.json")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 400, "log_history": [
        {"loss": 1.0, "step": 400}, {"eval_dev_dev_score": 90.39, "eval_runtime": 9.0, "step": 400}]}))
    (run / "wall_time.json").write_text(json.dumps({"seconds": 5006.11}))
    selection = tmp_path / "sel.json"
    selection.write_text(json.dumps({"selection_score": 79.44, "by_type": {"retrieval": 84.96}}))
    out = bundle(export, "x", tmp_path / "bundled", checkpoint=ckpt, selection=selection)
    prov = json.loads((out / "lganna.json").read_text())["provenance"]
    assert prov["steps"] == 400 and prov["best_checkpoint"] == str(ckpt) and prov["wall_time_s"] == 5006.1
    assert prov["dev_end"] == {"dev_dev_score": 90.39} and prov["selected_by"]["selection_score"] == 79.44
    assert (out / "adapter_model.safetensors").read_bytes() == (ckpt / "adapter_model.safetensors").read_bytes()
    np.testing.assert_allclose(LGAnnaEncoder.from_pretrained(out).encode(TEXTS),
                               LGAnnaEncoder.from_pretrained(other).encode(TEXTS), atol=2e-5)
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
        bundle(export, "x", tmp_path / "b2", checkpoint=tmp_path)
