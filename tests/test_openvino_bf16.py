"""OpenVINO bfloat16 inference (`precision="bf16-openvino"`), and how `auto` chooses among the precisions."""

from __future__ import annotations

import copy
import importlib.util
import warnings

import numpy as np
import pytest
import torch

from files import DOCS, QUERIES
from lganna_rag import LGAnnaEncoder



def _load(name: str, precision: str) -> LGAnnaEncoder:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # minilm: "no prompt template" for the retrieval task
        return LGAnnaEncoder.from_pretrained(name, device="cpu", precision=precision)


@pytest.mark.filterwarnings("ignore::lganna_rag.encoder.PromptIgnoredWarning")
@pytest.mark.parametrize("name", ["minilm", "lganna-minilm", "bge-small", "lganna-bge-small"])
def test_every_registered_encoder_at_bf16_openvino_matches_fp32_and_ranks_alike(name, sts_sentences):
    """The path ``auto`` picks on bf16 CPUs, per registered encoder (adapters merged before the export): vectors at
    cosine >= 0.99 to fp32 on real sentences, queries with their instruction too, and each query's related
    document first, as at fp32."""
    from lganna_rag.models import ModelNotFoundError
    from lganna_rag.openvino_bf16 import OpenVinoTransformer

    pytest.importorskip("openvino")
    try:
        fp32, ov = _load(name, "fp32"), _load(name, "bf16-openvino")
    except ModelNotFoundError as exc:  # bge-small's files: make test installs them; a bare clone may lack them
        pytest.skip(str(exc))
    assert ov.precision == "bf16-openvino" and isinstance(ov.model, OpenVinoTransformer)
    a, b = ov.encode_documents(sts_sentences), fp32.encode_documents(sts_sentences)
    cos = (a * b).sum(1)
    assert cos.min() >= 0.99, (cos.min(), cos.mean())
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)  # the encoder's own normalisation ran
    qo, q32 = ov.encode_queries(QUERIES, task="retrieval"), fp32.encode_queries(QUERIES, task="retrieval")
    assert ((qo * q32).sum(1) >= 0.99).all()
    for q, d in ((qo, ov.encode_documents(DOCS)), (q32, fp32.encode_documents(DOCS))):
        assert (ov.similarity(q, d).argmax(1) == np.arange(len(QUERIES))).all()
    # padding is masked: a short text alone and inside a padded batch get the same vector
    short = min(range(len(sts_sentences)), key=lambda i: len(sts_sentences[i]))
    assert float(ov.encode([sts_sentences[short]])[0] @ a[short]) > 0.999


def test_the_export_is_cached_per_fingerprint_and_a_wrong_build_is_refused(tmp_path, monkeypatch):
    """First load exports into the cache; the next one compiles the cached file without exporting again; a compiled
    graph that does not compute the torch model's hidden states is refused (the check runs at every load)."""
    from lganna_rag import onnx_int8, openvino_bf16

    pytest.importorskip("openvino")
    monkeypatch.setenv("LGANNA_CACHE", str(tmp_path))
    first = _load("minilm", "bf16-openvino")
    files = list(tmp_path.glob("onnx/*/model-fp32.onnx"))
    assert len(files) == 1 and first.model.path == files[0]
    before = files[0].stat().st_mtime_ns
    monkeypatch.setattr(onnx_int8, "export_fp32", lambda *a, **k: pytest.fail("exported again"))
    again = _load("minilm", "bf16-openvino")
    assert again.model.path == files[0] and files[0].stat().st_mtime_ns == before
    assert not list(tmp_path.glob("onnx/*/.export-*"))  # no temporary folder left behind
    with pytest.raises(ValueError, match="save the fp32 model"):
        again.save_pretrained(tmp_path / "saved")

    other = copy.deepcopy(_load("minilm", "fp32").model)  # same shapes, other weights: the cached graph is wrong
    with torch.no_grad():
        for layer in other.encoder.layer:
            layer.output.dense.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="differs from torch fp32"):
        openvino_bf16.check_against(other, again.model, pad_id=again.pad_token_id)


def test_explicit_bf16_openvino_errors_name_the_fix(mistral_dir, monkeypatch):
    """A decoder, a non-fp32 dtype, an unmerged adapter, a GPU device and a missing OpenVINO each get a specific
    message."""
    from lganna_rag import loading, openvino_bf16

    with pytest.raises(ValueError, match="encoder models only; use 'bf16' for a decoder"):
        LGAnnaEncoder.from_pretrained(str(mistral_dir), device="cpu", precision="bf16-openvino")
    with pytest.raises(ValueError, match="converts float32 weights: leave dtype unset"):
        LGAnnaEncoder.from_pretrained("minilm", device="cpu", dtype="bfloat16", precision="bf16-openvino")
    with pytest.raises(ValueError, match=r"needs the adapter merged \(merge_adapter=True\)"):
        LGAnnaEncoder.from_pretrained("lganna-minilm", device="cpu", merge_adapter=False, precision="bf16-openvino")
    with pytest.raises(ValueError, match="runs on CPU only, not on cuda"):
        loading.resolve_precision("bf16-openvino", torch.device("cuda"))
    real = importlib.util.find_spec
    monkeypatch.setattr(openvino_bf16.importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(ImportError, match=r"needs OpenVINO .*pip install openvino; precision 'bf16' runs"):
        LGAnnaEncoder.from_pretrained("minilm", device="cpu", precision="bf16-openvino")


def test_auto_takes_the_first_measured_choice_that_runs_here(monkeypatch):
    """``auto`` walks a model's measured choices, fastest first: bf16-openvino needs an encoder, bf16 dot products and
    OpenVINO; bf16 the dot products; int8-onnx the integer dot products; else fp32. Another dtype or an unmerged
    adapter runs fp32."""
    from lganna_rag import loading, openvino_bf16

    choices = ("bf16-openvino", "bf16")

    def auto(**kw):
        return loading.concrete_precision("auto", **{"is_decoder": False, "dtype_given": False, "merged": True,
                                                     "auto_choice": choices, **kw})

    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert auto() == "bf16-openvino"
    assert auto(is_decoder=True) == "bf16"  # OpenVINO runs encoders only
    assert auto(dtype_given=True) == "fp32" and auto(merged=False) == "fp32"
    assert auto(auto_choice=()) == "fp32"
    assert auto(auto_choice=("int8-onnx",)) == "fp32"  # no integer dot products
    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"amx_int8", "amx_bf16"}))
    assert auto(auto_choice=("int8-onnx", "bf16")) == "int8-onnx"
    real = importlib.util.find_spec
    monkeypatch.setattr(openvino_bf16.importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else real(name, *a))
    assert auto() == "bf16"
    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert auto() == "fp32"
