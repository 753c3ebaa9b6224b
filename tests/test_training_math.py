"""Mining rules, the teacher's fusion and the losses (lganna_rag.objectives, the training engine) on hand-computed
numbers."""

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lganna_rag.objectives import (fusion_scores, group_scores, info_nce, keep_mask, make_reranker, self_distillation,
                                   soft_label_kl, teacher_distribution)
from lganna_rag.training.losses import LGAnnaLoss
from lganna_rag.training.teachers import mine_negatives

REPO = Path(__file__).resolve().parents[1]


def test_the_recipes_math_has_one_home_and_adapt_needs_no_training_extra():
    import lganna_rag.training.losses as losses
    import lganna_rag.training.teachers as teachers

    assert teachers.keep_mask is keep_mask and teachers.make_reranker is make_reranker  # old names still importable
    assert losses.info_nce is info_nce and losses.soft_label_kl is soft_label_kl
    # importing the math (and adapt) is cheap: no torch, sentence-transformers or bm25s until a function needs them
    code = ("import sys, lganna_rag.objectives, lganna_rag.metrics, lganna_rag.adapt; "
            "assert not {'torch', 'sentence_transformers', 'bm25s'} & set(sys.modules), sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    source = (REPO / "lganna_rag" / "adapt.py").read_text()
    assert not re.findall(r"^\s*(?:from|import)\s+(?:lganna_rag\.training|\.training|sentence_transformers|bm25s)",
                          source, re.MULTILINE)


def test_fusion_hand_computed():
    dense, bm25 = np.array([0.9, -0.2, 0.5]), np.array([2.0, 4.0, 0.0])
    # 0.7 x dense clipped to [0, 1] + 0.3 x bm25 / 4
    assert fusion_scores(dense, bm25).tolist() == pytest.approx([0.63 + 0.15, 0.3, 0.35])
    assert fusion_scores(dense, np.zeros(3), 0.5).tolist() == pytest.approx([0.45, 0.0, 0.25])  # no BM25 match
    name, score = make_reranker("fusion", 0.7)
    assert name == "fusion(dense=0.7, bm25=0.3)"
    assert score("q", ["a", "b", "c"], {"dense": dense, "bm25": bm25}).tolist() == pytest.approx([0.78, 0.3, 0.35])
    with pytest.raises(ValueError, match="unknown reranker"):
        make_reranker("bm25")


def test_cross_encoder_teacher_scores_as_sentence_transformers_does(tmp_path):
    """The cross-encoder stage 2 (transformers only) equals sentence-transformers' CrossEncoder.predict (sigmoid of
    the one logit, long documents truncated) on a tiny random BERT."""
    st = pytest.importorskip("sentence_transformers")
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from lganna_rag.models import REGISTRY

    tok = AutoTokenizer.from_pretrained(REGISTRY["minilm"].locate())
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64, num_labels=1)
                                  ).save_pretrained(tmp_path / "ce")
    tok.save_pretrained(tmp_path / "ce")
    query, docs = "what temperature for green tea?", ["Use water below boiling.", "restart containers " * 400, "x"]
    expected = st.CrossEncoder(str(tmp_path / "ce")).predict([(query, d) for d in docs], show_progress_bar=False)
    name, score = make_reranker(f"cross-encoder:{tmp_path / 'ce'}")
    assert name == f"cross-encoder({tmp_path / 'ce'})"
    assert score(query, docs, {}).tolist() == pytest.approx(np.asarray(expected, dtype=np.float64).tolist(), abs=1e-6)


def test_self_distillation_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert self_distillation(a, a).item() == pytest.approx(0.0, abs=1e-7)
    # row 0 orthogonal to its base (1 - 0), row 1 opposite (1 - (-1)): mean 1.5
    assert self_distillation(a, torch.tensor([[0.0, 3.0], [0.0, -1.0]])).item() == pytest.approx(1.5)


def test_adaptive_margin_scales_with_the_positive():
    # positive 0.80 -> limit 0.76; positive 0.40 -> limit 0.38
    assert keep_mask(0.80, [0.79, 0.76, 0.75, 0.10], "adaptive", perc=0.95) == [False, False, True, True]
    assert keep_mask(0.40, [0.39, 0.37], "adaptive", perc=0.95) == [False, True]


def test_margin_fixed_and_none_modes():
    assert keep_mask(0.80, [0.76, 0.74], "margin", margin=0.05) == [False, True]
    assert keep_mask(0.80, [0.71, 0.69], "fixed", threshold=0.7) == [False, True]
    assert keep_mask(0.80, [0.99, 0.1], "none") == [True, True]
    with pytest.raises(ValueError, match="unknown mining mode"):
        keep_mask(0.8, [0.1], "random")


def test_mine_negatives_drops_positives_and_ambiguous_then_takes_hardest():
    cands = ["pos", "other_pos", "a", "b", "c", "d"]
    scores = [0.90, 0.88, 0.89, 0.80, 0.50, 0.85]
    # limit 0.855: a (0.89) is ambiguous (a likely false negative); d 0.85, b 0.80, c 0.50 survive
    assert mine_negatives(cands, scores, {"pos", "other_pos"}, 0.90, k=2) == ["d", "b"]
    assert mine_negatives(cands, scores, {"pos", "other_pos"}, 0.90, k=2, mode="none") == ["a", "d"]
    with pytest.raises(ValueError, match="6 candidates but 5 scores"):
        mine_negatives(cands, scores[:5], set(), 0.9, k=1)


def test_info_nce_hand_computed():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    docs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # q0: pos, neg; q1: pos, neg
    tau = 0.5
    # q0 logits: [2, 0, 0, 2]; target 0 -> loss = -log(e^2 / (2e^2 + 2))
    l0 = -math.log(math.exp(2) / (2 * math.exp(2) + 2))
    # q1 logits: [0, 2, 2, 0]; target 2 -> same value
    assert info_nce(q, docs, group_size=2, temperature=tau).item() == pytest.approx(l0, rel=1e-6)
    with pytest.raises(ValueError, match="expected at least 4 docs"):
        info_nce(q, docs[:3], group_size=2)
    # another device's documents come first: the targets move by the offset, the value is the same
    assert info_nce(q, torch.cat([torch.zeros(2, 2), docs]), 2, tau, offset=2).item() == pytest.approx(
        -math.log(math.exp(2) / (2 * math.exp(2) + 2 + 2)), rel=1e-6)


def test_group_scores_and_kl_hand_computed():
    q = torch.tensor([[1.0, 0.0]])
    docs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scores = group_scores(q, docs, 2)
    assert scores.tolist() == [[1.0, 0.0]]
    teacher = torch.tensor([[0.5, 0.5]])
    # student probs with tau=1: softmax([1, 0]) = [e/(e+1), 1/(e+1)]
    p = [math.e / (math.e + 1), 1 / (math.e + 1)]
    expected = sum(t * math.log(t / s) for t, s in zip([0.5, 0.5], p))
    assert soft_label_kl(scores, teacher, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    assert soft_label_kl(torch.tensor([[0.3, 0.1]]), teacher_distribution(torch.tensor([[0.3, 0.1]]), 1.0), 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_teacher_distribution_hand_computed():
    probs = teacher_distribution(torch.tensor([[2.0, 1.0, 0.0]]), temperature=1.0)
    e = [math.exp(2), math.exp(1), 1.0]
    assert probs[0].tolist() == pytest.approx([x / sum(e) for x in e], rel=1e-6)


class _Identity(torch.nn.Module):
    """Stands in for a SentenceTransformer: the features already are the embeddings."""

    def forward(self, features):
        return {"sentence_embedding": features["x"]}


def test_lganna_loss_is_infonce_plus_kl_and_gradcache_gives_the_same_gradients():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    neg = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([[0.9, 0.3], [0.8, 0.8]])  # teacher scores of [positive, negative]
    features = [{"x": q}, {"x": pos}, {"x": neg}]
    tau = 0.5
    nce = -math.log(math.exp(2) / (2 * math.exp(2) + 2))  # as in test_info_nce_hand_computed
    # KL: student group scores [1, 0] for both queries; teacher probs softmax(labels / 0.1)
    p_s = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    kl = 0.0
    for row in labels.tolist():
        t = [math.exp(x / 0.1) for x in row]
        t = [x / sum(t) for x in t]
        kl += sum(a * math.log(a / b) for a, b in zip(t, p_s))
    kl /= 2
    loss = LGAnnaLoss(_Identity(), temperature=tau, kl_weight=0.5, soft_label_temperature=0.1)
    assert loss(features, labels).item() == pytest.approx(nce + 0.5 * kl, rel=1e-5)
    assert LGAnnaLoss(_Identity(), temperature=tau, kl_weight=0.0)(features, labels).item() == pytest.approx(nce, rel=1e-6)
    # hard labels only when no 2-D teacher scores come with the batch (sentence-transformers passes zeros)
    assert loss(features, torch.zeros(2)).item() == pytest.approx(nce, rel=1e-6)
    with pytest.raises(ValueError, match="3 scores per query but the batch has 2"):
        loss(features, torch.zeros(2, 3))

    # GradCache (mini-batches of 1) gives the same loss and the same gradients as one pass
    def grads(mini):
        xs = [f["x"].clone().requires_grad_() for f in features]
        out = LGAnnaLoss(_Identity(), temperature=tau, kl_weight=0.5, soft_label_temperature=0.1, mini_batch_size=mini)(
            [{"x": x} for x in xs], labels)
        out.backward()
        return out.item(), [x.grad for x in xs]

    plain, cached = grads(None), grads(1)
    assert plain[0] == pytest.approx(cached[0], rel=1e-6)
    for a, b in zip(plain[1], cached[1]):
        assert torch.allclose(a, b, atol=1e-6)


# ---------------------------------------------------------------------------- data hygiene and ICL sampling
def _jsonl(path, rows):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_leakage_check_fires_on_a_planted_test_sentence(tmp_path):
    from lganna_rag.training.data import LeakageError, check_leakage, source

    _jsonl(tmp_path / "STSBenchmark" / "test.jsonl", [{"sentence1": "A girl is styling her hair.", "sentence2": "A girl brushes hair.", "score": 2.5}])
    _jsonl(tmp_path / "train" / "msrp.jsonl", [
        {"query": "Completely unrelated training text.", "positive": "Another one."},
        {"query": "Something else", "positive": "a  GIRL is styling her hair."},  # same text after normalisation
    ])
    with pytest.raises(LeakageError, match=r"train/msrp\.jsonl:2: .*STSBenchmark/test\.jsonl:1"):
        check_leakage([source("msrp")], root=tmp_path)
    _jsonl(tmp_path / "train" / "msrp.jsonl", [{"query": "Completely unrelated training text.", "positive": "Another one."}])
    assert check_leakage([source("msrp")], root=tmp_path) == 1


def test_real_training_data_is_clean_and_loads(data_root):
    from lganna_rag.training.data import SOURCES, check_leakage, load_examples, source

    assert check_leakage(SOURCES) > 90000
    banking = load_examples(source("banking77"))
    assert banking and all(ex.label for ex in banking) and all(ex.query != ex.positive for ex in banking)


def test_icl_examples_come_from_the_same_source_and_never_the_query_itself():
    import random

    from lganna_rag.training.data import Example, ExamplePool

    exs = [Example("a", f"q{i}", f"p{i}") for i in range(5)] + [Example("b", "bq", "bp")]
    pool = ExamplePool.from_examples(exs)
    rng = random.Random(0)
    for _ in range(50):
        picked = pool.sample(exs[0], 3, rng)
        assert len(picked) == 3 and ("q0", "p0") not in picked and all(q.startswith("q") for q, _ in picked)
    assert pool.sample(exs[-1], 2, rng) == []  # only one pair in source b: nothing else to show
