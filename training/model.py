"""Build the small Mistral-architecture student from WordLlama's LLM-derived token embeddings.

The student starts where WordLlama is: token embeddings copied from the WordLlama table (Llama-2
32k vocabulary), every layer's residual outputs (``o_proj``, ``down_proj``) zero-initialised, so
the untrained model's hidden states are exactly the token embeddings (then the final RMSNorm).
The directory it writes loads with :class:`lganna_rag.LGAnnaEncoder`, ``transformers.AutoModel``
and ``sentence_transformers.SentenceTransformer``.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lganna_rag.models import ModelConfig
from lganna_rag.prompts import PROMPT_VERSION

WORDLLAMA_TABLE = "weights/l2_supercat_256.safetensors"
WORDLLAMA_TOKENIZER = "tokenizers/l2_supercat_tokenizer_config.json"


def wordllama_dir() -> Path:
    """Folder of the installed ``wordllama`` package (its weights and tokenizer files; never its ``load()``)."""
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("this needs the 'wordllama' package: pip install wordllama (or lganna-rag[train])")
    return Path(list(spec.submodule_search_locations)[0])


@dataclass
class StudentConfig:
    """Shape of the student; ``hidden_size`` must not exceed WordLlama's 256 dimensions."""

    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    intermediate_size: int = 768
    max_position_embeddings: int = 512
    pooling: str = "mean"
    zero_init_residuals: bool = True


def llama2_tokenizer(append_eos: bool = True) -> Any:
    """WordLlama's Llama-2 tokenizer as a transformers fast tokenizer; ``append_eos`` adds ``</s>`` after each text."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_file(str(wordllama_dir() / WORDLLAMA_TOKENIZER))
    tok.no_padding()
    tok.no_truncation()
    if append_eos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>")


def build_student(cfg: StudentConfig, seed: int = 0) -> torch.nn.Module:
    """A ``MistralModel`` that, untrained, embeds texts exactly like WordLlama (mean of token vectors).

    - Token embeddings: the first ``hidden_size - 1`` WordLlama dimensions, scaled to unit RMS; the last
      dimension is a constant "ballast" ``8 * sqrt(hidden)`` that dominates every RMSNorm's denominator,
      so the norms act as (almost) linear scalings, and is given weight 0 in every norm. BOS/EOS rows hold
      only the ballast (no content).
    - ``zero_init_residuals``: every ``o_proj`` / ``down_proj`` is zero, so hidden states are the embeddings
      (mean pooling then equals WordLlama's mean).
    - For ``pooling="last"``, layer 0's attention is initialised to uniform causal averaging (``q_proj = 0``,
      ``v_proj = o_proj = I``), so the EOS position holds the mean of the text's token vectors.
    """
    from safetensors.torch import load_file
    from transformers import MistralConfig, MistralModel

    table = load_file(str(wordllama_dir() / WORDLLAMA_TABLE))["embedding.weight"].float()
    h = cfg.hidden_size
    if h - 1 > table.shape[1]:
        raise ValueError(f"hidden_size {h} exceeds the WordLlama table's {table.shape[1]} dimensions + 1")
    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=table.shape[0], hidden_size=h, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        sliding_window=None, bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False,
    )
    model = MistralModel(config)
    if not cfg.zero_init_residuals:
        return model
    ballast = 8.0 * h**0.5
    with torch.no_grad():
        emb = table[:, : h - 1]
        emb = emb / emb.pow(2).sum(-1).mean().sqrt() * (h - 1) ** 0.5  # typical token: unit RMS per dimension
        weight = torch.zeros(table.shape[0], h)
        weight[:, : h - 1] = emb
        weight[:, h - 1] = ballast
        # <unk>, <s>, </s>: no content until trained, but they keep the ballast. A zero row would make RMSNorm
        # divide by sqrt(eps): the first optimizer step (~lr in every dimension) then turns it into a full-size
        # random vector that every later token attends to (measured: training collapsed from the WordLlama start).
        weight[[0, 1, 2], : h - 1] = 0.0
        model.embed_tokens.weight.copy_(weight)
        # RMS of a token's hidden state is ~ballast/sqrt(h) = 8: norm weights 8 restore unit scale; ballast weight 0.
        norm_weight = torch.full((h,), 8.0)
        norm_weight[h - 1] = 0.0
        for layer in model.layers:
            layer.input_layernorm.weight.copy_(norm_weight)
            layer.post_attention_layernorm.weight.copy_(norm_weight)
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.norm.weight.copy_(norm_weight)
        if cfg.pooling == "last":
            attn = model.layers[0].self_attn
            if attn.v_proj.weight.shape != (h, h):
                raise ValueError("pooling='last' initialisation needs num_key_value_heads == num_attention_heads")
            attn.q_proj.weight.zero_()
            attn.v_proj.weight.copy_(torch.eye(h))
            attn.o_proj.weight.copy_(torch.eye(h))
    return model


def save_student(model: torch.nn.Module, tokenizer: Any, out: Path, pooling: str, max_length: int = 512,
                 provenance: dict[str, Any] | None = None, dtype: torch.dtype = torch.float32,
                 prompt_template: str | None = "e5") -> Path:
    """Write a model directory (safetensors, tokenizer, lganna.json, sentence-transformers modules).

    ``prompt_template=None`` records a model trained without instructions (queries are embedded plainly).
    """
    out.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    model.float()
    tokenizer.save_pretrained(out)
    ModelConfig(pooling=pooling, normalize=True, append_eos=True, max_length=max_length, prompt_template=prompt_template,
                prompt_version=PROMPT_VERSION, provenance=provenance or {}).save(out)
    st_pool = {"word_embedding_dimension": model.config.hidden_size, "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_lasttoken": pooling == "last"}
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(st_pool, indent=2) + "\n")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length, "do_lower_case": False}) + "\n")
    return out


def student_summary(cfg: StudentConfig) -> dict[str, Any]:
    """The student's shape as a plain dict (for provenance)."""
    return asdict(cfg)
