"""LangChain, LlamaIndex and mteb adapters: standard suites plus real-model behaviour."""

import asyncio
import subprocess
import sys

import numpy as np
import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from lganna_rag.integrations.langchain import LGAnnaEmbeddings
from tiny_models import tiny_model_dir


# ---------------------------------------------------------------------------- LangChain standard suites
class _TinyMistralParams:
    @property
    def embeddings_class(self):
        return LGAnnaEmbeddings

    @property
    def embedding_model_params(self):
        return {"model": str(tiny_model_dir("mistral")), "task": "retrieval"}


class TestLGAnnaEmbeddingsUnit(_TinyMistralParams, EmbeddingsUnitTests):
    pass


class TestLGAnnaEmbeddingsIntegration(_TinyMistralParams, EmbeddingsIntegrationTests):
    pass


def test_top_level_import_is_lazy():
    code = (
        "import sys, lganna_rag; assert 'langchain_core' not in sys.modules; assert 'torch' not in sys.modules; "
        "from lganna_rag import LGAnnaEmbeddings; assert 'langchain_core' in sys.modules; "
        "assert 'llama_index' not in sys.modules and 'lganna_rag.training' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_langchain_queries_get_instruction_documents_do_not(mistral):
    emb = LGAnnaEmbeddings(encoder=mistral, task="SciFact", examples=[("claim", "evidence")])
    q = "Aspirin reduces the risk of heart attacks."
    np.testing.assert_allclose(emb.embed_query(q), mistral.encode_queries([q], task="SciFact", examples=[("claim", "evidence")])[0], atol=1e-6)
    np.testing.assert_allclose(emb.embed_documents([q])[0], mistral.encode_documents([q])[0], atol=1e-6)
    assert abs(np.array(emb.embed_query(q)) - np.array(emb.embed_documents([q])[0])).max() > 1e-4
    assert asyncio.run(emb.aembed_query(q)) == pytest.approx(emb.embed_query(q), abs=1e-6)


def test_langchain_loads_lazily_and_reports_bad_names():
    emb = LGAnnaEmbeddings(model="./no/such/model")
    with pytest.raises(OSError, match="no model './no/such/model'"):
        emb.embed_query("hi")
    with pytest.raises(KeyError, match="unknown task"):
        LGAnnaEmbeddings(task="not a task")


def test_langchain_minilm_ranks_the_relevant_document_first(minilm):
    emb = LGAnnaEmbeddings(encoder=minilm)
    docs = [
        "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
        "Photosynthesis converts light energy into chemical energy in plants.",
        "The Great Wall of China stretches thousands of kilometres.",
    ]
    doc_vecs = np.array(emb.embed_documents(docs))
    query = np.array(emb.embed_query("How do plants make energy from sunlight?"))
    assert int(np.argmax(doc_vecs @ query)) == 1


# ---------------------------------------------------------------------------- LlamaIndex
def test_llama_index_query_side_instruction(mistral):
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from lganna_rag.integrations.llama_index import LGAnnaEmbedding

    emb = LGAnnaEmbedding(encoder=mistral, task="retrieval")
    assert isinstance(emb, BaseEmbedding) and emb.model_name == mistral.name
    q = "what is the boiling point of water"
    np.testing.assert_allclose(emb.get_query_embedding(q), mistral.encode_queries([q], task="retrieval")[0], atol=1e-6)
    np.testing.assert_allclose(emb.get_text_embedding(q), mistral.encode_documents([q])[0], atol=1e-6)
    batch = emb.get_text_embedding_batch(["a", "b", "c"])
    np.testing.assert_allclose(batch, mistral.encode_documents(["a", "b", "c"]), atol=1e-6)
    assert asyncio.run(emb.aget_query_embedding(q)) == pytest.approx(emb.get_query_embedding(q), abs=1e-6)
    np.testing.assert_allclose(asyncio.run(emb.aget_text_embedding_batch(["a", "b"])), batch[:2], atol=1e-6)


def test_llama_index_minilm_semantics(minilm):
    from lganna_rag.integrations.llama_index import LGAnnaEmbedding

    emb = LGAnnaEmbedding(encoder=minilm)
    q = np.array(emb.get_query_embedding("Which city is the capital of France?"))
    docs = np.array(emb.get_text_embedding_batch(["Paris is the capital of France.", "Bananas are rich in potassium."]))
    sims = docs @ q
    assert sims[0] > sims[1] + 0.3


# ---------------------------------------------------------------------------- mteb
def _loader(texts):
    from torch.utils.data import DataLoader

    return DataLoader([{"text": t} for t in texts], batch_size=2, collate_fn=lambda b: {"text": [x["text"] for x in b]})


def test_mteb_wrapper_maps_prompt_types_and_tasks(mistral):
    import mteb
    from mteb.types import PromptType

    from lganna_rag.integrations.mteb import LGAnnaMTEBModel

    model = LGAnnaMTEBModel(encoder=mistral, examples={"SciFact": [("a claim", "an abstract")]})
    texts = ["first text", "second, longer text here", "third"]
    scifact = mteb.get_task("SciFact").metadata
    stsb = mteb.get_task("STSBenchmark").metadata
    q = model.encode(_loader(texts), task_metadata=scifact, hf_split="test", hf_subset="default", prompt_type=PromptType.query)
    d = model.encode(_loader(texts), task_metadata=scifact, hf_split="test", hf_subset="default", prompt_type=PromptType.document)
    s = model.encode(_loader(texts), task_metadata=stsb, hf_split="test", hf_subset="default", prompt_type=PromptType.document)
    np.testing.assert_allclose(q, mistral.encode_queries(texts, task="SciFact", examples=[("a claim", "an abstract")]), atol=1e-6)
    np.testing.assert_allclose(d, mistral.encode_documents(texts), atol=1e-6)
    # symmetric tasks: the instruction goes on both sides
    np.testing.assert_allclose(s, mistral.encode_queries(texts, task="STSBenchmark"), atol=1e-6)
    assert model.mteb_model_meta.embed_dim == 64


def test_mteb_wrapper_scores_a_real_sts_sample_with_minilm(minilm, sts_pairs):
    """The wrapper inside mteb's own STS evaluator on 60 scored sentence pairs (tests/fixtures/sts_pairs.jsonl)."""
    from scipy.stats import spearmanr

    from lganna_rag.integrations.mteb import LGAnnaMTEBModel
    import mteb

    rows = sts_pairs
    model = LGAnnaMTEBModel(encoder=minilm)
    meta = mteb.get_task("STSBenchmark").metadata
    a = model.encode(_loader([r["sentence1"] for r in rows]), task_metadata=meta, hf_split="test", hf_subset="default")
    b = model.encode(_loader([r["sentence2"] for r in rows]), task_metadata=meta, hf_split="test", hf_subset="default")
    cos = np.asarray(model.similarity_pairwise(a, b))
    rho = spearmanr(cos, [r["score"] for r in rows]).statistic
    assert rho > 0.75, rho


def test_framework_adapters_at_the_top_level_lazily_and_a_missing_framework_names_the_extra():
    """`from lganna_rag import LGAnnaEmbedding` (LlamaIndex) works; without LangChain the error says what to install."""
    code = (
        "import sys; import lganna_rag\n"
        "assert 'llama_index' not in sys.modules and 'langchain_core' not in sys.modules\n"
        "from lganna_rag import LGAnnaEmbedding\n"
        "from lganna_rag.integrations.llama_index import LGAnnaEmbedding as Direct\n"
        "assert LGAnnaEmbedding is Direct\n"
        "sys.modules['langchain_core'] = None  # as if only the core were installed\n"
        "try:\n"
        "    from lganna_rag import LGAnnaEmbeddings\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'pip install "lganna-rag[langchain]"' in out.stdout and "langchain_core" in out.stdout
