"""The student distillation (issue 13's last try for the 4 x 256 student): units, target reduction, the
WordLlama start, the least-squares map into the targets' space, and a tiny run end to end on the shared data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from lganna_rag import LGAnnaEncoder
from test_training import PAIRS

pytest.importorskip("wordllama")


def test_text_units_are_sentences_windows_and_the_whole_text():
    from lganna_rag.training.distill import text_units

    text = "Bees collect nectar in spring. They add enzymes to it! Water evaporates in the hive. Honey is the result."
    units = text_units(text, min_chars=20)
    assert units[:4] == ["Bees collect nectar in spring.", "They add enzymes to it!", "Water evaporates in the hive.",
                         "Honey is the result."]
    assert "Bees collect nectar in spring. They add enzymes to it!" in units  # a two-sentence window
    assert "They add enzymes to it! Water evaporates in the hive. Honey is the result." in units  # three
    assert units[-1] == text and len(units) == len(set(units)) == 4 + 3 + 2 + 1
    # short sentences are not units of their own; a one-sentence text is not repeated as its "whole"
    assert text_units("Too short. Also short.", min_chars=20) == ["Too short. Also short."]
    assert text_units("One sentence that is long enough.", min_chars=20) == ["One sentence that is long enough."]


def test_principal_directions_keep_cosines_of_low_rank_targets_and_the_ballast_gets_zero():
    from lganna_rag.training.distill import principal_directions, reduce_targets

    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(32, 8)))[0]  # vectors in an 8-d subspace of 32 dims
    vectors = rng.normal(size=(400, 8)) @ basis.T
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    directions, energy = principal_directions(vectors, 8)
    assert directions.shape == (32, 8) and energy == pytest.approx(1.0, abs=1e-5)
    reduced = reduce_targets(vectors, directions, 9)
    assert reduced.shape == (400, 9) and np.all(reduced[:, 8] == 0)
    np.testing.assert_allclose(np.linalg.norm(reduced, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(reduced @ reduced.T, vectors @ vectors.T, atol=1e-4)  # cosines kept
    fewer, part = principal_directions(vectors, 4)
    assert 0.3 < part < 0.99  # half the directions keep part of the squared norm, not all
    with pytest.raises(ValueError, match="dim must be between 1 and 32"):
        principal_directions(vectors, 33)


def test_untrained_student_embeds_like_wordllama_and_the_map_moves_it_toward_the_targets():
    import torch

    from lganna_rag.static import StaticEncoder
    from lganna_rag.static import wordllama_tokenizer
    from lganna_rag.training.distill import StudentConfig, align_table, build_student

    texts = [t for pair in PAIRS for t in pair]
    student, tok = build_student(StudentConfig(hidden_size=64, num_hidden_layers=2, intermediate_size=96)), wordllama_tokenizer(bos_eos=True)
    batch = tok(texts, padding=True, return_tensors="pt")
    assert (batch["input_ids"][:, 0] == 1).all()  # <s> ... </s>
    with torch.no_grad():
        hidden = student(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    wordllama = StaticEncoder.from_pretrained(dim=63).encode(texts)
    assert np.min((pooled[:, :63] * wordllama).sum(1)) > 0.999  # untrained = WordLlama (first 63 dims)

    # targets that are an exact linear map of the pooled vectors: the map recovers them (held-out cosine ~1)
    rng = np.random.default_rng(0)
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    table = student.embed_tokens.weight.detach()[:, :63]
    means = torch.stack([table[i].mean(0) for i in ids]).numpy()
    mix = rng.normal(size=(63, 63))
    targets = means @ mix
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    cosine = align_table(student, tok, texts * 3, np.concatenate([targets] * 3), ridge=1e-9)
    assert cosine > 0.99
    rows = student.embed_tokens.weight.detach()
    assert torch.all(rows[:3, :63] == 0) and torch.all(rows[:, 63] == rows[5, 63])  # specials empty, ballast kept
    assert (rows[3:, :63].pow(2).sum(-1).mean() / 63).item() == pytest.approx(1.0, rel=1e-4)  # unit RMS per dim


@pytest.mark.needs_data
def test_a_tiny_distillation_exports_a_model_both_loaders_agree_on(tmp_path):
    """Texts from the shared training files, MiniLM targets, 6 steps: the export loads in LGAnnaEncoder and
    SentenceTransformer with the same vectors, records its provenance, ranks answers above unrelated texts;
    a rerun with more steps resumes from the checkpoint and reuses the cached targets."""
    from lganna_rag.integrations.sentence_transformers import load_sentence_transformer
    from lganna_rag.training.distill import distill, load_distill_config

    cfg = {"name": "tiny-student", "output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"),
           "student": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                       "intermediate_size": 96},
           "n_texts": 384, "part_size": 128, "align_texts": 384, "steps": 4, "batch_size": 16, "lr": 1e-3,
           "warmup_steps": 0, "eval_every": 2, "save_every": 2, "dev_sts_pairs": 40, "max_length": 32}
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(cfg))
    summary = distill(load_distill_config(path))
    assert summary["steps"] == 4 and summary["texts"] == 384 and summary["target_dims"] == 63
    assert summary["teacher_seconds"] > 0
    parts = sorted((tmp_path / "cache").glob("targets-*/part-*.npy"))
    assert len(parts) == 3 and np.load(parts[0]).dtype == np.float16
    export = tmp_path / "run" / "final"
    settings = json.loads((export / "lganna.json").read_text())
    assert settings["pooling"] == "mean" and settings["include_prompt"] is False and settings["base_model"] is None
    assert settings["provenance"]["teacher"] == "minilm" and settings["provenance"]["alignment_held_out_cosine"] > 0

    queries, answers = [q for q, _ in PAIRS], [a for _, a in PAIRS]
    enc = LGAnnaEncoder.from_pretrained(export)
    q, d = enc.encode_queries(queries), enc.encode_documents(answers)
    st = load_sentence_transformer(str(export))
    assert np.min((st.encode(answers, normalize_embeddings=True) * d).sum(1)) > 0.9999
    scores = q @ d.T
    assert np.mean(np.argmax(scores, axis=1) == np.arange(len(queries))) > 0.5  # answers outrank the others

    mtime = parts[0].stat().st_mtime
    again = distill(load_distill_config(path, steps=6))
    assert again["steps"] == 6 and parts[0].stat().st_mtime == mtime  # resumed; targets not recomputed


def test_the_distill_config_names_unknown_keys(tmp_path):
    from lganna_rag.training.distill import load_distill_config

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"steps": 10, "student": {"hidden_size": 64, "layers": 2}}))
    with pytest.raises(ValueError, match=r"StudentConfig: unknown keys \['layers'\]"):
        load_distill_config(path)
    shipped = load_distill_config(Path(__file__).parents[1] / "training" / "configs" / "lganna-mini-distill.yaml")
    assert shipped.n_texts >= 1_000_000 and shipped.student.hidden_size == 256 and shipped.teacher == "minilm"
