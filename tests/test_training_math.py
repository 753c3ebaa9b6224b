"""Mining rules and losses on hand-computed numbers."""

import math

import pytest
import torch

from lganna_rag.training.losses import distill_loss, group_scores, info_nce, soft_label_kl, teacher_distribution
from lganna_rag.training.mining import keep_mask, mine_negatives


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
    with pytest.raises(ValueError, match="expected 4 docs"):
        info_nce(q, docs[:3], group_size=2)


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


def test_teacher_distribution_and_distill_loss():
    probs = teacher_distribution(torch.tensor([[2.0, 1.0, 0.0]]), temperature=1.0)
    e = [math.exp(2), math.exp(1), 1.0]
    assert probs[0].tolist() == pytest.approx([x / sum(e) for x in e], rel=1e-6)
    # the student copies the teacher's geometry in another dimension (a rotation + zero padding): loss 0
    tq, td = torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([[0.0, 2.0], [1.0, 1.0], [4.0, 3.0]])
    rot = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    assert distill_loss(tq @ rot * 5, td @ rot, tq, td).item() == pytest.approx(0.0, abs=1e-6)
    # one query, two docs: student cosines (1, 0), teacher cosines (0, 1) -> KL by hand at temperature 1, and
    # the 3x3 cosine matrices differ in 4 off-diagonal entries by 1 -> MSE 4/9
    q, d = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t_q, t_d = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p_s = [math.e / (math.e + 1), 1 / (math.e + 1)]
    kl = sum(t * math.log(t / s) for t, s in zip(p_s[::-1], p_s))
    assert distill_loss(q, d, t_q, t_d, temperature=1.0, sim_weight=0).item() == pytest.approx(kl, rel=1e-6)
    assert distill_loss(q, d, t_q, t_d, temperature=1.0, sim_weight=1.0).item() == pytest.approx(kl + 4 / 9, rel=1e-6)


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
