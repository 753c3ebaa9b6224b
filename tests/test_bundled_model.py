"""The bundled model ``lganna-minilm`` (a LoRA adapter over all-MiniLM-L6-v2) and the default-model choice."""

from __future__ import annotations

import numpy as np
import pytest

from lganna_rag import LGAnnaEncoder
from lganna_rag.models import DEFAULT_MODEL, REGISTRY, bundled_weights_dir, default_model_name, read_model_config


def test_default_model_choice(monkeypatch):
    monkeypatch.setenv("LGANNA_MODEL", "lganna-minilm")  # read by the command line only (--model's variable)
    assert default_model_name() == DEFAULT_MODEL == "bge-small"
    assert LGAnnaEncoder.from_pretrained().name == DEFAULT_MODEL


def test_the_removed_student_is_not_registered():
    """lganna-mini (the 4x256 Mistral student) failed its keep criterion and left the package."""
    assert "lganna-mini" not in REGISTRY and not (bundled_weights_dir() / "lganna-mini").exists()


# ---------------------------------------------------------------------------------------------- lganna-minilm
MINILM_ADAPTER = bundled_weights_dir() / "lganna-minilm"


@pytest.fixture(scope="module")
def lganna_minilm() -> LGAnnaEncoder:
    return LGAnnaEncoder.from_pretrained("lganna-minilm", precision="fp32")  # the merged torch model itself


def test_lganna_minilm_is_a_small_adapter_over_the_installed_minilm(lganna_minilm):
    cfg = read_model_config(MINILM_ADAPTER, is_decoder=False)
    assert cfg.base_model == "minilm" and cfg.pooling == "mean" and not cfg.include_prompt and cfg.prompt_template == "e5"
    # instructions where they measured better (retrieval, reranking); the teacher's dense half is all-mpnet-base-v2
    assert cfg.instruction_task_types == ["retrieval", "reranking"] and cfg.provenance["teacher"]["dense"] == "mpnet"
    assert lganna_minilm.render_queries(["a b"], task="sts") == ["a b"]
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


def test_instruction_task_types_embed_other_task_types_plain():
    """A model instructed only for retrieval embeds STS queries as plain text, retrieval ones with the prompt."""
    enc = LGAnnaEncoder.from_pretrained("lganna-minilm", instruction_task_types=["retrieval", "reranking"])
    q = ["A man is playing a guitar."]
    assert enc.render_queries(q, task="sts") == q
    assert enc.render_queries(q, task="SciFact")[0].startswith("Instruct: ")
    np.testing.assert_allclose(enc.encode_queries(q, task="sts"), enc.encode_documents(q), atol=1e-6)
    with pytest.raises(ValueError, match="unknown task types"):
        LGAnnaEncoder.from_pretrained("lganna-minilm", instruction_task_types=["retreival"])
