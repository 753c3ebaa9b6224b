"""ONNX Runtime int8 inference (`precision="int8-onnx"`, and `int8` when onnxruntime is installed)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from files import DOCS, QUERIES
from lganna_rag import LGAnnaEncoder
from lganna_rag.encoder import int8_backend



@pytest.fixture(scope="module")
def lganna_pair(tmp_path_factory):
    """lganna-minilm at fp32 and through ONNX Runtime int8, exported into a fresh cache folder."""
    pytest.importorskip("onnxruntime", reason="ONNX int8 needs the optional extra: pip install 'lganna-rag[onnx]'")
    cache = tmp_path_factory.mktemp("lganna-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("LGANNA_CACHE", str(cache))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp32 = LGAnnaEncoder.from_pretrained("lganna-minilm", device="cpu", precision="fp32")
        int8 = LGAnnaEncoder.from_pretrained("lganna-minilm", device="cpu", precision="int8")
    yield fp32, int8, cache
    mp.undo()


def test_int8_runs_through_onnx_runtime_and_stays_close_to_fp32(lganna_pair, sts_sentences):
    from lganna_rag.onnx_int8 import OnnxInt8Transformer

    fp32, int8, cache = lganna_pair
    assert int8.precision == "int8-onnx" and isinstance(int8.model, OnnxInt8Transformer)
    files = list(cache.glob("onnx/*/model-int8.onnx"))
    assert len(files) == 1 and int8.model.path == files[0]
    assert files[0].stat().st_size < 40e6  # int8 weights: about a quarter of MiniLM's 90 MB
    a, b = int8.encode_documents(sts_sentences), fp32.encode_documents(sts_sentences)
    cos = (a * b).sum(1)
    assert cos.min() >= 0.97 and cos.mean() >= 0.98
    assert cos.min() < 0.99999  # really quantized, not the fp32 graph
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)  # the encoder's own normalisation ran
    # the same short text alone or in a padded batch: padding is masked in the ONNX graph too (not bit-equal:
    # dynamic quantization scales the activations per batch)
    short = min(range(len(sts_sentences)), key=lambda i: len(sts_sentences[i]))
    assert float(int8.encode([sts_sentences[short]])[0] @ a[short]) > 0.99


@pytest.mark.parametrize("task", [None, "retrieval"], ids=["plain", "instruction"])
def test_onnx_int8_queries_rank_like_fp32(lganna_pair, task):
    fp32, int8, _ = lganna_pair
    if task is not None:  # lganna-minilm: the instruction is attended to but left out of the mean
        assert fp32.excludes_prompt and int8.render_queries(["q"], task) != ["q"]
    q8, q32 = int8.encode_queries(QUERIES, task=task), fp32.encode_queries(QUERIES, task=task)
    assert ((q8 * q32).sum(1) >= 0.97).all()
    scores = int8.similarity(q8, int8.encode_documents(DOCS))
    assert (scores.argmax(1) == np.arange(len(QUERIES))).all()  # each query's related doc outranks the others


def test_onnx_export_is_cached_per_fingerprint(lganna_pair, monkeypatch):
    from lganna_rag import onnx_int8

    _, int8, cache = lganna_pair
    before = int8.model.path.stat().st_mtime_ns
    monkeypatch.setattr(onnx_int8, "export_int8", lambda *a, **k: pytest.fail("exported again"))
    monkeypatch.setenv("LGANNA_CACHE", str(cache))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = LGAnnaEncoder.from_pretrained("lganna-minilm", device="cpu", precision="int8-onnx")
    assert again.model.path == int8.model.path and again.model.path.stat().st_mtime_ns == before
    assert not list(cache.glob("onnx/*/.export-*"))  # no temporary folder left behind
    with pytest.raises(ValueError, match="save the fp32 model"):
        again.save_pretrained(cache / "saved")


def test_int8_falls_back_to_torch_and_onnx_errors_clearly_without_onnxruntime(monkeypatch):
    import importlib.util

    from lganna_rag import onnx_int8

    real = importlib.util.find_spec
    monkeypatch.setattr(onnx_int8.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert int8_backend("int8", is_decoder=False) == "int8-torch"
    assert int8_backend("fp32", is_decoder=False) == "fp32"
    with pytest.raises(ImportError, match=r"needs onnxruntime .*pip install 'lganna-rag\[onnx\]'.*int8-torch"):
        int8_backend("int8-onnx", is_decoder=False)
    with pytest.raises(ImportError, match="onnxruntime"):
        LGAnnaEncoder.from_pretrained("minilm", device="cpu", precision="int8-onnx")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="encoder models only"):
        int8_backend("int8-onnx", is_decoder=True)
    assert int8_backend("int8", is_decoder=True) == "int8-torch"


def test_auto_precision_is_the_models_measured_choice_where_the_cpu_supports_it_and_fp32_elsewhere(
        lganna_pair, monkeypatch, mistral_dir):
    """``auto``: a registered model's measured precision where the CPU supports it (int8-onnx: an fp32 encoder, integer
    dot-product instructions, onnxruntime; bf16: bf16 dot products); fp32 for other models, on other CPUs, for
    decoders, other dtypes, other devices, and without onnxruntime. The CPU default resolves the same way."""
    import dataclasses
    import importlib.util

    import torch

    import lganna_rag.loading as loading
    from lganna_rag import onnx_int8
    from lganna_rag.encoder import CPU_DEFAULT_PRECISION, resolve_precision
    from lganna_rag.models import REGISTRY

    fp32, int8, cache = lganna_pair
    monkeypatch.setenv("LGANNA_CACHE", str(cache))
    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    # what passed the rule (README, Speed): int8 lost more than 1.0 on a task for both MiniLM (LiveQA -1.25) and
    # bge-small (TrecQA -1.77); OpenVINO bf16 and PyTorch bf16 passed for both (OpenVINO's is the faster)
    assert {n: m.auto_precision for n, m in REGISTRY.items() if m.auto_precision} == {
        "bge-small": ("bf16-openvino", "bf16"), "minilm": ("bf16-openvino", "bf16"),
        "lganna-minilm": ("bf16-openvino",), "lganna-bge-small": ("bf16-openvino",)}
    assert LGAnnaEncoder.from_pretrained("lganna-minilm", device="cpu", precision="auto").precision == "fp32"
    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert loading.concrete_precision("auto", is_decoder=False, dtype_given=False, merged=True,
                                      auto_choice=("bf16",)) == "bf16"
    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    assert loading.concrete_precision("auto", is_decoder=False, dtype_given=False, merged=True,
                                      auto_choice=("bf16",)) == "fp32"
    monkeypatch.setitem(REGISTRY, "lganna-minilm",
                        dataclasses.replace(REGISTRY["lganna-minilm"], auto_precision=("int8-onnx",)))
    assert resolve_precision(None, torch.device("cuda")) == "fp32"
    auto = LGAnnaEncoder.from_pretrained("lganna-minilm", device="cpu", precision="auto")  # cached by the fixture
    assert auto.precision == "int8-onnx"
    np.testing.assert_allclose(auto.encode(DOCS), int8.encode(DOCS), atol=1e-6)
    assert LGAnnaEncoder.from_pretrained("lganna-minilm", device="cpu", dtype="bfloat16", precision="auto").precision == "fp32"
    assert LGAnnaEncoder.from_pretrained(str(mistral_dir), device="cpu", precision="auto").precision == "fp32"
    default = LGAnnaEncoder.from_pretrained("lganna-minilm", device="cpu").precision
    assert default == ("int8-onnx" if CPU_DEFAULT_PRECISION == "auto" else CPU_DEFAULT_PRECISION)
    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"avx2", "fma"}))  # no int8 dot products
    assert int8_backend("auto", is_decoder=False) == "fp32"
    assert LGAnnaEncoder.from_pretrained("lganna-minilm", device="cpu", precision="auto").precision == "fp32"
    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"amx_int8"}))
    assert int8_backend("auto", is_decoder=False) == "int8-onnx"
    real = importlib.util.find_spec
    monkeypatch.setattr(onnx_int8.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert int8_backend("auto", is_decoder=False) == "fp32"


def test_a_collection_keeps_one_precision_for_its_documents(lganna_pair, tmp_path):
    """A collection records the precision its document vectors were made at: writing documents at another one is
    an error naming the --precision to use; an Index without precision= takes the collection's; queries at another
    precision are allowed (within cosine 0.99 of the fp32 query)."""
    from lganna_rag import Index
    from lganna_rag.stores import IndexStoreError

    fp32, int8, _ = lganna_pair
    with Index(tmp_path / "store", encoder=fp32) as index:
        index.add_texts(DOCS)
        assert index.metadata["model"]["precision"] == "fp32"
    with Index(tmp_path / "store", encoder=int8) as index:
        with pytest.raises(IndexStoreError, match=r"made at precision fp32; this encoder runs at int8-onnx: index it "
                                                  r"with --precision fp32"):
            index.add_texts(["Another document about tea."])
        hits = index.search(QUERIES[0], k=1, mode="dense")  # an int8 query over fp32 documents: fine
        assert hits[0].text == DOCS[0]
    with Index(tmp_path / "store", model="lganna-minilm") as index:  # no precision given: the collection's
        assert index.encoder.precision == "fp32"
        index.add_texts(["Another document about tea."])
        assert index.count() == len(DOCS) + 1


@pytest.mark.parametrize("name", ["minilm", "bge-small", "lganna-bge-small"])
def test_every_registered_encoder_at_int8_onnx_stays_close_to_fp32_and_ranks_alike(name, sts_sentences):
    """The path ``auto`` picks on int8 CPUs, per registered encoder (lganna-minilm above): vectors close to fp32 on
    real sentences (dynamic int8 quantizes activations per batch, so a few sentences fall just under 0.99) and each
    query's related document first, as at fp32."""
    from lganna_rag.models import ModelNotFoundError

    pytest.importorskip("onnxruntime")
    try:
        fp32 = LGAnnaEncoder.from_pretrained(name, device="cpu", precision="fp32")
        int8 = LGAnnaEncoder.from_pretrained(name, device="cpu", precision="int8-onnx")
    except ModelNotFoundError as exc:  # bge-small's files: make test installs them; a bare clone may lack them
        pytest.skip(str(exc))
    cos = (int8.encode_documents(sts_sentences) * fp32.encode_documents(sts_sentences)).sum(1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.97, (cos.mean(), cos.min())
    q8, q32 = int8.encode_queries(QUERIES, task="retrieval"), fp32.encode_queries(QUERIES, task="retrieval")
    assert ((q8 * q32).sum(1) >= 0.97).all()
    for q, d in ((q8, int8.encode_documents(DOCS)), (q32, fp32.encode_documents(DOCS))):
        assert (int8.similarity(q, d).argmax(1) == np.arange(len(QUERIES))).all()
