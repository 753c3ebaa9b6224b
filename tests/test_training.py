"""The student model builder (WordLlama start) and, later, the trainer."""

import json
import time

import numpy as np
import pytest

from lganna_rag import LGAnnaEncoder, ModelConfig
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


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_special_token_rows_survive_a_first_optimizer_step(pooling):
    """Adam moves every row by ~lr on step one; <s>/</s> must not turn that into a full-size random vector."""
    import torch

    cfg = StudentConfig(hidden_size=256, num_hidden_layers=2, intermediate_size=256, pooling=pooling)
    model = build_student(cfg)
    enc = LGAnnaEncoder(model, llama2_tokenizer(), ModelConfig(pooling=pooling), is_decoder=True)
    before = enc.encode(SENTENCES)
    with torch.no_grad():  # what one Adam step at lr 1e-4 does to the <unk>, <s>, </s> rows
        model.embed_tokens.weight[[0, 1, 2]] += 1e-4 * torch.sign(torch.randn(3, 256, generator=torch.Generator().manual_seed(0)))
    after = enc.encode(SENTENCES)
    assert (before * after).sum(1).min() > 0.999


def test_student_loads_in_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    out = save_student(build_student(StudentConfig(num_hidden_layers=1, pooling="last")), llama2_tokenizer(), tmp_path / "m", "last")
    st = SentenceTransformer(str(out), device="cpu")
    ours = LGAnnaEncoder.from_pretrained(out).encode(SENTENCES)
    np.testing.assert_allclose(st.encode(SENTENCES, normalize_embeddings=True), ours, atol=1e-4)


# ---------------------------------------------------------------------------- the trainer
def _tiny_config(tmp_path, **kw):
    from lganna_rag.training.model import StudentConfig
    from lganna_rag.training.teachers import TeacherConfig
    from lganna_rag.training.trainer import MiningConfig, TrainConfig

    base = dict(
        name="tiny", output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path.parent / "teacher-cache"), seed=3,
        student=StudentConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                              intermediate_size=128, pooling="last"),
        sources=["msrp.jsonl", "trecqa.jsonl"], max_examples_per_source=48, dev_examples_per_source=5,
        max_length=64, teacher=TeacherConfig(n_candidates=8), mining=MiningConfig(k=2),
        steps=20, batch_size=8, lr=1e-3, warmup_steps=2, eval_every=10, save_every=10, dev_sts_pairs=100,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.needs_data  # msrp/trecqa training rows and STSBenchmark dev
def test_training_decreases_loss_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from lganna_rag.training.trainer import train

    full = train(_tiny_config(tmp_path / "a"), progress=False)
    assert full["steps"] == 20 and len(full["losses"]) == 20
    assert np.mean(full["losses"][-5:]) < np.mean(full["losses"][:5])
    assert full["best"] is not None and (tmp_path / "a" / "run" / "best" / "lganna.json").is_file()

    cfg = _tiny_config(tmp_path / "b")
    first = train(cfg, max_steps=10, progress=False)
    state_path = tmp_path / "b" / "run" / "checkpoint" / "state.json"
    wall_first = json.loads(state_path.read_text())["wall_seconds"]
    t0 = time.time()
    second = train(cfg, progress=False)  # resumes from the step-10 checkpoint
    # the wall time recorded (and the time budget) covers the whole run, not only the resumed part
    assert json.loads(state_path.read_text())["wall_seconds"] > wall_first + 0.5 * (time.time() - t0)
    assert first["steps"] == 10 and second["steps"] == 20
    np.testing.assert_allclose(second["losses"], full["losses"][10:], rtol=1e-5)
    wa = load_file(str(tmp_path / "a" / "run" / "checkpoint" / "trainable.safetensors"))
    wb = load_file(str(tmp_path / "b" / "run" / "checkpoint" / "trainable.safetensors"))
    for name in wa:
        np.testing.assert_allclose(wa[name].numpy(), wb[name].numpy(), atol=1e-6)

    # the exported model serves through the normal loader, with provenance
    best = LGAnnaEncoder.from_pretrained(tmp_path / "a" / "run" / "best")
    assert best.config.provenance["teacher"]["stage2"].startswith("fusion")
    assert best.encode_queries(["what is a paraphrase?"], task="MSRP").shape == (1, 64)


def test_embedding_lr_freezes_or_slows_the_table():
    """embedding_lr=0 keeps the WordLlama table bit-exact while the layers learn; a smaller rate moves it less."""
    import torch

    from lganna_rag.training.trainer import TrainConfig, build_optimizer

    moved = {}
    for emb_lr in (0.0, 1e-4, None):
        torch.manual_seed(0)
        model = build_student(StudentConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                            num_key_value_heads=2, intermediate_size=128))
        table = model.embed_tokens.weight.detach().clone()
        layer = model.layers[0].mlp.down_proj.weight.detach().clone()
        opt = build_optimizer(model, TrainConfig(lr=1e-3, embedding_lr=emb_lr))
        direction = torch.randn(64, generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            out = model(input_ids=torch.tensor([[1, 450, 6635, 2]])).last_hidden_state
            opt.zero_grad()
            (out[0, -1] * direction).sum().backward()  # not scale-invariant, unlike |norm(h)|^2
            opt.step()
        moved[emb_lr] = (model.embed_tokens.weight - table).abs().max().item()
        assert (model.layers[0].mlp.down_proj.weight - layer).abs().max().item() > 1e-3  # the layers always train
        assert model.embed_tokens.weight.requires_grad == (emb_lr != 0.0)
    assert moved[0.0] == 0.0 and 0 < moved[1e-4] < moved[None]


@pytest.mark.needs_data  # msrp/trecqa training rows and STSBenchmark dev
def test_distillation_only_without_instructions(tmp_path):
    """Pure dense-teacher distillation (no InfoNCE, no KL) trains, and a no-instruction model embeds queries plainly."""
    from lganna_rag.training.trainer import train

    cfg = _tiny_config(tmp_path, contrastive_weight=0.0, kl_weight=0.0, distill_weight=1.0, use_instructions=False)
    run = train(cfg, progress=False)
    assert run["steps"] == 20 and all(np.isfinite(run["losses"])) and min(run["losses"]) > 0
    best = LGAnnaEncoder.from_pretrained(tmp_path / "run" / "best")
    assert best.config.prompt_template is None and best.config.provenance["instructions"] is False
    assert best.config.provenance["loss_weights"]["distill"] == 1.0
    assert best.config.provenance["optimizer"]["lr"] == cfg.lr and best.config.provenance["optimizer"]["embedding_lr"] is None
    np.testing.assert_allclose(best.encode_queries(["a cat sat on the mat"], task="MSRP"),
                               best.encode_documents(["a cat sat on the mat"]), atol=1e-6)


def test_distillation_pulls_the_student_to_the_teacher_geometry():
    """Gradient steps on the relational distillation loss fit MiniLM's similarities through the real encoder."""
    import torch

    from lganna_rag.training.losses import distill_loss

    texts = SENTENCES + ["A woman plays the violin.", "Shares dropped steeply this week.", "I forgot my login password."]
    teacher = torch.from_numpy(LGAnnaEncoder.from_pretrained("minilm").encode(texts))
    cfg = StudentConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                        intermediate_size=128, pooling="mean")
    enc = LGAnnaEncoder(build_student(cfg), llama2_tokenizer(), ModelConfig(pooling="mean"), is_decoder=True)
    batch = enc.collate(enc.tokenize(texts)[0])
    opt = torch.optim.Adam(enc.model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        v = enc.embed(batch)
        loss = distill_loss(v[:4], v[4:], teacher[:4], teacher[4:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.needs_data  # msrp/trecqa training rows and STSBenchmark dev
def test_torchrun_two_cpu_processes(tmp_path):
    """DDP smoke test: 2 processes, gloo backend, 4 steps of the same trainer."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    cfg = {
        "name": "ddp", "output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path.parent / "teacher-cache"), "seed": 3,
        "student": {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
                    "intermediate_size": 128, "pooling": "last"},
        "sources": ["msrp.jsonl", "trecqa.jsonl"], "max_examples_per_source": 48, "dev_examples_per_source": 5,
        "max_length": 64, "teacher": {"n_candidates": 8}, "mining": {"k": 2}, "steps": 4, "batch_size": 8,
        "eval_every": 4, "save_every": 4, "dev_sts_pairs": 50,
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "lganna_rag.training.trainer", str(path)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 4 and (tmp_path / "run" / "checkpoint" / "trainable.safetensors").is_file()


def test_7b_lora_config_builds_peft_model_on_tiny_mistral(mistral_dir):
    import torch

    from lganna_rag.training.cli import resolve_config
    from lganna_rag.training.trainer import build_encoder, load_config

    cfg = load_config(resolve_config("configs/mistral-7b-lora.yaml"), base_model=str(mistral_dir))
    assert cfg.lora.r == 16 and cfg.dtype == "bfloat16" and cfg.gradient_checkpointing
    enc = build_encoder(cfg)
    from peft import PeftModel

    assert isinstance(enc.model, PeftModel)
    trainable = {n for n, p in enc.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("down_proj" in n for n in trainable) and any("q_proj" in n for n in trainable)
    ids, _ = enc.tokenize(["Instruct: find\\nQuery: a test", "a document"], 32)
    vec = enc.embed(enc.collate(ids))
    assert vec.dtype == torch.float32 and vec.shape == (2, 64)
    vec.sum().backward()
    assert all(p.grad is not None for n, p in enc.model.named_parameters() if p.requires_grad)
