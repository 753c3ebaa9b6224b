"""Speed options: the static fast tier (`wordllama`) and int8 CPU inference (`precision="int8"`)."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

from lganna_rag import LGAnnaEncoder
from lganna_rag.encoder import quantize_int8, resolve_precision

DynamicLinear = torch.ao.nn.quantized.dynamic.Linear


@pytest.fixture(scope="module")
def wordllama():
    pytest.importorskip("wordllama")
    return LGAnnaEncoder.from_pretrained("wordllama")


def test_wordllama_is_registered_and_equals_the_mean_of_its_table_rows(wordllama):
    from pathlib import Path

    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    from lganna_rag.models import REGISTRY
    from lganna_rag.static import WORDLLAMA_TABLE, WORDLLAMA_TOKENIZER, StaticEncoder, wordllama_dir

    assert REGISTRY["wordllama"].kind == "static" and isinstance(wordllama, StaticEncoder)
    assert wordllama.dimension == 256 and wordllama.config.prompt_template is None
    root = Path(wordllama_dir())
    table = load_file(str(root / WORDLLAMA_TABLE))["embedding.weight"].astype(np.float32)
    tok = Tokenizer.from_file(str(root / WORDLLAMA_TOKENIZER))
    texts = ["The cat sat on the mat.", "Paris is the capital of France.", "", "word " * 700]
    want = np.zeros((len(texts), 256), dtype=np.float32)
    for i, t in enumerate(texts):
        ids = tok.encode(t, add_special_tokens=False).ids[:512]
        if ids:
            v = table[ids].mean(axis=0)
            want[i] = v / np.linalg.norm(v)
    got = wordllama.encode(texts)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not got[2].any()  # an empty text: a zero vector, not NaN
    ids, truncated = wordllama.tokenize(texts)
    assert truncated == 1 and len(ids[3]) == 512 and ids[0][0] != 1  # no <s>
    # no prompt template: queries are embedded as plain text, and the batch does not change a vector
    with warnings.catch_warnings():  # the task is ignored (and may be warned about): no template
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(wordllama.encode_queries(texts[:2], task="SciFact"), got[:2], atol=1e-6)
    np.testing.assert_allclose(wordllama.encode([texts[1]])[0], got[1], atol=1e-6)


def test_wordllama_indexes_and_finds_the_matching_chunk(wordllama, tmp_path):
    from lganna_rag import Index

    docs = ["Green tea should be brewed with water at about 80 degrees Celsius for two minutes.",
            "Kubernetes restarts a pod when its liveness probe fails repeatedly.",
            "The Eiffel Tower is in Paris and was finished in 1889."]
    with Index(tmp_path / "store", collection="fast", model="wordllama") as index:
        index.add_texts(docs, metadatas=[{"source": f"d{i}.md"} for i in range(3)])
        assert index.metadata["model"]["name"] == "wordllama" and index.metadata["model"]["dimension"] == 256
        hits = index.search("what temperature for brewing green tea", k=1, mode="dense")
        assert hits[0].source == "d0.md"
        assert index.search("liveness probe pod restarts", k=1, mode="hybrid")[0].source == "d1.md"


def test_int8_quantizes_every_linear_layer_and_stays_close_to_fp32(minilm, sts_sentences, sts_pairs):
    from scipy.stats import spearmanr

    int8 = LGAnnaEncoder.from_pretrained("minilm", precision="int8-torch", device="cpu")
    assert int8.precision == "int8-torch" and minilm.precision == "fp32"
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in minilm.model.modules())
    quantized = [m for m in int8.model.modules() if isinstance(m, DynamicLinear)]
    assert n_linear == 37 and len(quantized) == n_linear  # 6 layers x (q, k, v, out, up, down) + the BERT pooler
    a, b = int8.encode(sts_sentences), minilm.encode(sts_sentences)
    cos = (a * b).sum(1)
    assert cos.min() > 0.95 and cos.mean() > 0.97  # close, but really quantized (not equal)
    assert cos.min() < 0.99999

    def spearman(enc: LGAnnaEncoder) -> float:
        x = enc.encode([p["sentence1"] for p in sts_pairs])
        y = enc.encode([p["sentence2"] for p in sts_pairs])
        return float(spearmanr((x * y).sum(1), [p["score"] for p in sts_pairs]).statistic)

    assert abs(spearman(int8) - spearman(minilm)) < 0.02


def test_precision_is_checked_and_has_a_default(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="CPU only"):
        resolve_precision("int8", cuda)
    from lganna_rag.encoder import CPU_DEFAULT_PRECISION

    assert resolve_precision(None, cpu) == CPU_DEFAULT_PRECISION and resolve_precision(None, cuda) == "fp32"
    monkeypatch.setenv("LGANNA_PRECISION", "int8")  # the library reads no environment: only the CLI does
    assert resolve_precision(None, cpu) == CPU_DEFAULT_PRECISION
    with pytest.raises(ValueError, match="float32"):
        LGAnnaEncoder.from_pretrained("minilm", precision="int8", dtype="bfloat16", device="cpu")
    tiny = torch.nn.Sequential(torch.nn.Linear(4, 4))
    assert isinstance(quantize_int8(tiny)[0], DynamicLinear)


def test_cli_precision_and_threads_options(monkeypatch):
    import json

    from click.testing import CliRunner

    from lganna_rag.cli import main

    monkeypatch.delenv("LGANNA_PRECISION", raising=False)
    threads = torch.get_num_threads()
    lines = "A man is playing a guitar.\nThe stock market fell sharply today.\n"
    runs = {p: CliRunner().invoke(main, ["embed", "--model", "minilm", "--precision", p, "--threads", "1"],
                                  input=lines) for p in ("fp32", "int8")}
    # a command run in-process leaves neither the precision nor the thread count behind
    assert "LGANNA_PRECISION" not in os.environ and torch.get_num_threads() == threads
    vectors = {}
    for p, r in runs.items():
        assert r.exit_code == 0, r.output
        # stdout only: a first int8 load reports its one-time ONNX export on stderr
        vectors[p] = np.array([json.loads(line)["vector"] for line in r.stdout.splitlines()])
    cos = (vectors["fp32"] * vectors["int8"]).sum(1)
    assert vectors["fp32"].shape == (2, 384) and 0.95 < cos.min() and cos.max() < 0.99999
    from lganna_rag.loading import PRECISIONS

    for command in ("index", "search", "embed", "serve"):
        help_text = CliRunner().invoke(main, [command, "--help"]).output
        assert f"--precision [{'|'.join(PRECISIONS)}]" in help_text and "--threads" in help_text
    bad = CliRunner().invoke(main, ["embed", "--precision", "int4"], input="x\n")
    assert bad.exit_code == 2 and "int4" in bad.output


def test_int8_bench_recommends_int8_only_when_both_targets_are_met():
    from lganna_rag.benchmarks.int8_bench import recommend

    targets = {"speedup": 1.8, "max_mean_loss_points": 0.5}
    def run(**variants: tuple[float, float]) -> dict:
        return {"targets": targets, "variants": {k.replace("_", "-"): {"over_fp32_texts_per_s": s, "mean_delta": d}
                                                 for k, (s, d) in variants.items()}}

    assert recommend(run(int8_onnx=(1.9, -0.3))) == "int8-onnx"
    assert recommend(run(int8_onnx=(1.9, -0.6))) == "fp32"
    assert recommend(run(int8_torch=(1.12, 0.1))) == "fp32"
    assert recommend(run(int8_torch=(2.0, -0.4), int8_onnx=(2.4, -0.2))) == "int8-onnx"  # the faster of two
    assert recommend(run(int8_torch=(2.0, -0.4), int8_onnx=(2.4, -0.7))) == "int8-torch"


def test_int8_quantized_store_is_opt_in_recorded_and_searchable(wordllama, tmp_path):
    from click.testing import CliRunner

    from lganna_rag import Index
    from lganna_rag.cli import main

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tea.md").write_text("Green tea should be brewed with water at about 80 degrees Celsius.\n")
    (docs / "pods.md").write_text("Kubernetes restarts a pod when its liveness probe fails repeatedly.\n")
    store = tmp_path / "store"
    out = CliRunner().invoke(main, ["index", str(docs), "--path", str(store), "-c", "q8", "--model", "wordllama",
                                    "--quantize", "int8", "--json"])
    assert out.exit_code == 0, out.output
    config = json.loads((store / "q8" / "shard" / "edge_config.json").read_text())
    assert "scalar" in json.dumps(config).lower()  # the engine really keeps an int8 copy
    with Index(store, collection="q8") as index:
        assert index.metadata["quantization"] == "int8"
        assert index.search("liveness probe keeps restarting my pod", k=1, mode="dense")[0].source == "pods.md"
    with Index(tmp_path / "plain", collection="f32", encoder=wordllama) as plain:
        plain.add_texts(["x"])
        assert "quantization" not in plain.metadata
    with pytest.raises(ValueError, match="quantization must be one of"):
        Index(tmp_path / "bad", collection="b", quantization="int4")
