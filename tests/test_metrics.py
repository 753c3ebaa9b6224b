"""lganna_rag.metrics on hand-computed numbers (ranks are 0-based: rank 2 is the third place)."""

import math

import numpy as np
import pytest

from lganna_rag.metrics import (answer_ranks, average_precision, dcg_at_k, mean_average_precision, mrr_at_k,
                                mrr_of_ranks, ndcg_at_k, ndcg_of_ranks, query_ndcg, rank_in, trec_order)


def test_rank_in_a_list():
    assert rank_in(["a", "b", "c", "b"], "b") == 1  # the first occurrence
    assert rank_in(["a", "b"], "z") == math.inf and rank_in([], "a") == math.inf


def test_answer_ranks_and_their_tie_rules():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.9], [0.5, 0.5, 0.9]])
    assert answer_ranks(scores, [0, 1, 1]).tolist() == [0, 1, 1]  # optimistic: the answer wins its tie with doc 0
    # argsort: numpy's order of the tie (doc 0 before doc 1), so the answer comes third
    assert answer_ranks(scores, [0, 1, 1], ties="argsort").tolist() == [0, 1, 2]
    assert answer_ranks(scores[2:], [0], ties="argsort").tolist() == [1]
    with pytest.raises(ValueError, match="unknown tie rule"):
        answer_ranks(scores, [0, 0, 0], ties="random")


def test_ndcg_of_one_relevant_document():
    assert ndcg_of_ranks([2]) == 0.5  # 1 / log2(4)
    assert ndcg_of_ranks([0, 2, 10]) == pytest.approx((1 + 0.5 + 0) / 3)  # rank 10 is past the cut
    assert ndcg_of_ranks([9], k=10) == pytest.approx(1 / math.log2(11)) and ndcg_of_ranks([9], k=9) == 0.0
    assert ndcg_of_ranks([math.inf]) == 0.0 and ndcg_of_ranks([]) == 0.0
    # score rows: query 0's answer ranked first (1.0), query 1's second (1 / log2(3))
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.9]])
    assert ndcg_of_ranks(answer_ranks(scores, [0, 1]), 10) == pytest.approx((1.0 + 1 / math.log2(3)) / 2)


def test_mrr():
    assert mrr_of_ranks([0, 2, math.inf]) == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert mrr_of_ranks([3], k=3) == 0.0 and mrr_of_ranks([2], k=3) == pytest.approx(1 / 3)
    assert mrr_of_ranks([]) == 0.0
    assert mrr_at_k([["a", "b"], ["x", "y", "b"], ["z"]], ["a", "b", "b"]) == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert mrr_at_k([list("abcdefghijk")], ["k"]) == 0.0 and mrr_at_k([list("abcdefghijk")], ["k"], k=11) == 1 / 11


def test_graded_ndcg_hand_computed():
    assert dcg_at_k([2, 0, 1]) == pytest.approx(2 + 1 / 2)  # 2 / log2(2) + 1 / log2(4)
    assert dcg_at_k([2, 0, 1], k=2) == 2.0
    assert query_ndcg([0, 0, 1], [1]) == 0.5
    assert query_ndcg([1, 2], [2, 1, 0]) == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    assert query_ndcg([0], [0, 0]) == 0.0
    qrels = {"q1": {"a": 2, "b": 1}, "q2": {"c": 1}, "q3": {"d": 0}}  # q3 has no relevant document: not counted
    run = {"q1": {"b": 0.9, "x": 0.8, "a": 0.7}, "q2": {"c": 0.1}}
    dcg = 1 / math.log2(2) + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(run, qrels, k=10) == pytest.approx((dcg / idcg + 1.0) / 2)
    assert ndcg_at_k(run, qrels, k=1) == pytest.approx((1 / 2 + 1.0) / 2)  # q1: b (gain 1) first, ideal 2
    assert ndcg_at_k({}, qrels) == 0.0 and ndcg_at_k(run, {}) == 0.0


def test_trec_ties_go_to_the_larger_document_id():
    assert trec_order({"a": 0.5, "c": 0.9, "b": 0.5}) == ["c", "b", "a"]
    # a and b tie: b is ranked first, so the relevant a is second
    assert ndcg_at_k({"q": {"a": 0.5, "b": 0.5}}, {"q": {"a": 1}}) == pytest.approx(1 / math.log2(3))


def test_average_precision_and_map_hand_computed():
    # relevant at ranks 1, 3 and 5 (1-based), a fourth relevant document never retrieved
    assert average_precision([True, False, True, False, True], 4) == pytest.approx((1 + 2 / 3 + 3 / 5) / 4)
    assert average_precision([False, False], 2) == 0.0 and average_precision([], 0) == 0.0
    qrels = {"q1": {"a": 1, "c": 2, "e": 1, "z": 1}, "q2": {"y": 1}, "q3": {"m": 0}, "q4": {"w": 1}}
    run = {"q1": {"a": 5, "b": 4, "c": 3, "d": 2, "e": 1}, "q2": {"x": 2, "y": 1}}  # q4: nothing retrieved
    ap1, ap2 = (1 + 2 / 3 + 3 / 5) / 4, 1 / 2
    assert mean_average_precision(run, qrels) == pytest.approx((ap1 + ap2 + 0) / 3)
    assert mean_average_precision(run, qrels, k=2) == pytest.approx((1 / 4 + 1 / 2 + 0) / 3)  # q1 keeps a, b
    assert mean_average_precision(run, {}) == 0.0


def test_bootstrap_lower_bound_separates_a_clear_gain_from_noise():
    from lganna_rag.metrics import bootstrap_lower

    clear = [0.1] * 40 + [0.0] * 10  # every query gains or ties
    noise = [0.5, -0.5] * 25  # as many losses as gains
    assert bootstrap_lower(clear) > 0 and bootstrap_lower(noise) < 0
    assert bootstrap_lower([]) == 0.0 and bootstrap_lower([0.2] * 5) == pytest.approx(0.2)
