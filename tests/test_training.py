"""The student model builder (WordLlama start) and, later, the trainer."""

import numpy as np
import pytest

from lganna_rag import LGAnnaEncoder
from lganna_rag.training.model import StudentConfig, build_student, llama2_tokenizer, save_student

SENTENCES = ["A man is playing a guitar.", "Stock prices fell sharply on Monday.", "How do I reset my password?",
             "The cat sleeps on the warm windowsill.", "Scientists discovered a new species of frog."]


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_untrained_student_equals_wordllama(pooling, tmp_path):
    from lganna_rag.benchmarks.models import WordLlamaStatic

    cfg = StudentConfig(hidden_size=256, num_hidden_layers=2, intermediate_size=256, pooling=pooling)
    out = save_student(build_student(cfg), llama2_tokenizer(), tmp_path / pooling, pooling)
    enc = LGAnnaEncoder.from_pretrained(out)
    assert enc.config.pooling == pooling and enc.is_decoder
    ids, _ = enc.tokenize(["hello world"])
    assert ids[0][0] == 1 and ids[0][-1] == 2 and ids[0].count(2) == 1  # tokenizer adds </s> once
    ours = enc.encode(SENTENCES)
    assert np.abs(ours[:, 255]).max() < 1e-6  # the ballast dimension is weighted 0 by the final norm
    ours = ours[:, :255]
    wl = WordLlamaStatic(dim=255).embed(SENTENCES)
    np.testing.assert_allclose((ours * wl).sum(1), 1.0, atol=2e-3)  # same direction as WordLlama's mean
    # and different texts stay different: the pairwise similarity structure is WordLlama's
    np.testing.assert_allclose(ours @ ours.T, wl @ wl.T, atol=5e-3)


def test_student_loads_in_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    out = save_student(build_student(StudentConfig(num_hidden_layers=1, pooling="last")), llama2_tokenizer(), tmp_path / "m", "last")
    st = SentenceTransformer(str(out), device="cpu")
    ours = LGAnnaEncoder.from_pretrained(out).encode(SENTENCES)
    np.testing.assert_allclose(st.encode(SENTENCES, normalize_embeddings=True), ours, atol=1e-4)
