"""From a model name to a ready torch module, tokenizer and serving settings: registry lookup, a local folder or a
hub snapshot, PEFT adapters (stacked and merged), dtype and the CPU precision (fp32, bf16, int8 through ONNX
Runtime or PyTorch). :meth:`lganna_rag.encoder.LGAnnaEncoder.from_pretrained` wraps the result.

Only safetensors weights are loaded; ``trust_remote_code`` stays off unless asked for.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .models import REGISTRY, ModelConfig, ModelNotFoundError, read_model_config

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: ``precision`` values of :meth:`LGAnnaEncoder.from_pretrained`. ``bf16``: the weights in bfloat16 on the CPU (AMX
#: where present); ``bf16-openvino``: OpenVINO's bf16 build of the fp32 weights (:mod:`lganna_rag.openvino_bf16`;
#: encoders only); ``int8-onnx``: ONNX Runtime int8 (:mod:`lganna_rag.onnx_int8`; encoders only); ``int8-torch``:
#: PyTorch dynamic quantization (:func:`quantize_int8`); ``int8``: ``int8-onnx`` for an encoder when onnxruntime is
#: installed, else ``int8-torch``; ``auto``: the first of a registered model's ``auto_precision`` choices (the
#: precisions whose vectors passed the quality rule, fastest first) that runs here (:func:`runs_here`), else fp32
#: (see :func:`concrete_precision`).
PRECISIONS = ("auto", "fp32", "bf16", "bf16-openvino", "int8", "int8-onnx", "int8-torch")
#: CPU features under which ``auto`` may run an encoder in int8 through ONNX Runtime: the integer dot-product
#: instructions its int8 kernels are built on. Which models passed the quality rule for it: README (Speed).
INT8_FEATURES = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
#: CPU features under which ``auto`` may run a model in bfloat16: native bf16 dot products (AVX-512 BF16, AMX).
BF16_FEATURES = frozenset({"avx512_bf16", "amx_bf16"})
#: Precision on CPU when none is given. Callers that need exact fp32 vectors (training teachers, the quality
#: benchmarks, parity checks) ask for ``fp32`` explicitly; the measurements behind the choice are in README.
CPU_DEFAULT_PRECISION = "auto"
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "1_Pooling/*"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class Loaded:
    """What :func:`load` returns: everything an encoder needs."""

    model: torch.nn.Module
    tokenizer: Any
    config: ModelConfig
    is_decoder: bool
    precision: str
    adapter_dir: Path | None


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """PyTorch dynamic int8 quantization of every ``nn.Linear`` (weights int8 per output channel, activations
    quantized per batch). CPU only. Embeddings, norms and attention arithmetic stay float32."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao; it still works
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """``precision`` checked, or the default: :data:`CPU_DEFAULT_PRECISION` on CPU, fp32 elsewhere."""
    if precision is None:
        precision = CPU_DEFAULT_PRECISION if device.type == "cpu" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto" and device.type != "cpu":
        return "fp32"
    if precision.startswith("int8") and device.type != "cpu":
        raise ValueError(f"precision {precision!r} (dynamic quantization) runs on CPU only, not on {device.type}")
    if precision == "bf16-openvino" and device.type != "cpu":
        raise ValueError(f"precision 'bf16-openvino' runs on CPU only, not on {device.type}")
    return precision


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where that cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            line = next((ln for ln in fh if ln.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())


def int8_backend(precision: str, *, is_decoder: bool) -> str:
    """The concrete precision: ``int8`` becomes ``int8-onnx`` (an encoder, onnxruntime installed) or ``int8-torch``;
    ``auto`` becomes ``int8-onnx`` (an encoder, onnxruntime installed, a CPU with :data:`INT8_FEATURES`) or
    ``fp32``.

    ``int8-onnx`` asked for explicitly raises ``ImportError`` (with the install command) when onnxruntime is
    missing and ``ValueError`` for a decoder; other values are returned unchanged.
    """
    from .onnx_int8 import onnx_available, require_onnx

    if precision == "auto":
        return "int8-onnx" if runs_here("int8-onnx", is_decoder=is_decoder) else "fp32"
    if precision == "int8":
        return "int8-onnx" if not is_decoder and onnx_available() else "int8-torch"
    if precision == "int8-onnx":
        if is_decoder:
            raise ValueError("precision 'int8-onnx' supports encoder models only; use 'int8-torch' for a decoder")
        require_onnx()
    return precision


def is_decoder_config(hf_config: Any) -> bool:
    """Whether a transformers config describes a decoder (no masked-LM head: last-token pooling, EOS appended)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return hf_config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dir(source: str, revision: str | None) -> Path:
    """A local directory for ``source``: itself, or a hub snapshot (safetensors and configs only)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(f"{source!r} is a file; pass the model's directory")
    if not _HUB_ID.fullmatch(source):
        raise ModelNotFoundError(f"no model {source!r}: it is not a local directory, not a registered name "
                                 f"({', '.join(REGISTRY)}), and not a Hugging Face hub id (org/name)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=source, revision=revision, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # network errors, offline mode, missing repo: one clear message
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        raise ModelNotFoundError(
            f"could not get {source!r} from the Hugging Face hub"
            f"{' (HF_HUB_OFFLINE is set and it is not in the local cache)' if offline else ''}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. Download it on a machine with "
            f"network access (huggingface-cli download {source}) and pass the local directory instead."
        ) from exc


def require_safetensors(directory: Path, what: str = "model") -> None:
    """Refuse a folder without ``*.safetensors`` weights (pickle files are never loaded)."""
    if not any(directory.glob("*.safetensors")):
        pickles = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pt*")]
        hint = f" (found {', '.join(pickles)}: pickle files are never loaded; convert them to safetensors)" if pickles else ""
        raise ModelNotFoundError(f"{directory} holds no *.safetensors {what} weights{hint}")


def resolve_chain(name: str, adapter: str | os.PathLike | None,
                  revision: str | None) -> tuple[Path, list[Path], dict[str, Any]]:
    """The base model's folder, the adapters to apply on it (innermost first) and the registry's setting overrides,
    for a registered name, folder or hub id (an adapter folder names its base: adapters over adapters resolve)."""
    overrides: dict[str, Any] = dict(REGISTRY[name].overrides) if name in REGISTRY else {}
    directory = resolve_dir(REGISTRY[name].locate() if name in REGISTRY else name, revision)
    adapter_dir = Path(adapter).expanduser() if adapter is not None else None
    if adapter_dir is not None and not (adapter_dir / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json)")
    chain = [adapter_dir] if adapter_dir is not None else []
    while (directory / "adapter_config.json").is_file() and not (directory / "config.json").is_file():
        if len(chain) > 4:
            raise ModelNotFoundError(f"{chain[-1]}: more than 4 adapters stacked over each other")
        chain.insert(0, directory)  # the directory is an adapter (e.g. lganna-minilm): find its base model
        base = read_model_config(directory, is_decoder=True).base_model if (directory / "lganna.json").is_file() else None
        base = base or json.loads((directory / "adapter_config.json").read_text())["base_model_name_or_path"]
        if base in REGISTRY:
            overrides = dict(REGISTRY[base].overrides)
            base = REGISTRY[base].locate()
        directory = resolve_dir(base, None)
    return directory, chain, overrides


def _weights(directory: Path, dtype: torch.dtype, trust_remote_code: bool) -> tuple[torch.nn.Module, bool]:
    """The transformer in ``directory`` (safetensors only) and whether it is a decoder."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    require_safetensors(directory)
    try:
        hf_config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise ModelNotFoundError(f"{directory}: unsupported model config ({exc})") from exc
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights: 100%" bar on every load (and every CLI command)
    try:
        model = AutoModel.from_pretrained(directory, config=hf_config, dtype=dtype, use_safetensors=True,
                                          trust_remote_code=trust_remote_code)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    return model, is_decoder_config(hf_config)


def _apply_adapters(model: torch.nn.Module, chain: list[Path], merge: bool) -> torch.nn.Module:
    """Apply PEFT adapters innermost first; inner ones are always merged, the outermost if ``merge``."""
    if not chain:
        return model
    from peft import PeftModel

    for i, folder in enumerate(chain):
        require_safetensors(folder, "adapter")
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
        if merge or i < len(chain) - 1:
            model = model.merge_and_unload()
    return model


def runs_here(precision: str, *, is_decoder: bool) -> bool:
    """Whether ``auto`` may choose ``precision`` for this model on this machine: ``bf16`` needs
    :data:`BF16_FEATURES`; ``bf16-openvino`` an encoder, those features, OpenVINO and ONNX Runtime (for the export);
    ``int8-onnx`` an encoder, onnxruntime and :data:`INT8_FEATURES`; ``fp32`` always runs."""
    from .onnx_int8 import onnx_available
    from .openvino_bf16 import openvino_available

    flags = cpu_flags()
    if precision == "bf16":
        return bool(BF16_FEATURES & flags)
    if precision == "bf16-openvino":
        return not is_decoder and bool(BF16_FEATURES & flags) and openvino_available() and onnx_available()
    if precision == "int8-onnx":
        return not is_decoder and onnx_available() and bool(INT8_FEATURES & flags)
    return precision == "fp32"


def concrete_precision(requested: str, *, is_decoder: bool, dtype_given: bool, merged: bool,
                       auto_choice: tuple[str, ...] = ()) -> str:
    """What runs for ``requested``. ``auto`` runs the first of the model's ``auto_choice`` (the precisions that
    passed the quality rule for it, fastest first) that :func:`runs_here`, for fp32 weights with merged adapters;
    else fp32. Explicit int8 or ``bf16-openvino`` with a non-fp32 ``dtype`` or an unmerged adapter is an error, and
    ``bf16-openvino`` for a decoder or without OpenVINO installed."""
    if requested == "auto":
        if dtype_given or not merged:
            return "fp32"
        return next((c for c in auto_choice if runs_here(c, is_decoder=is_decoder)), "fp32")
    chosen = int8_backend(requested, is_decoder=is_decoder)
    if chosen == "bf16-openvino":
        from .openvino_bf16 import require_openvino

        if is_decoder:
            raise ValueError("precision 'bf16-openvino' supports encoder models only; use 'bf16' for a decoder")
        require_openvino()
    if chosen.startswith("int8") or chosen == "bf16-openvino":
        if dtype_given:
            raise ValueError(f"precision {chosen!r} converts float32 weights: leave dtype unset (or float32)")
        if not merged:
            raise ValueError(f"precision {chosen!r} needs the adapter merged (merge_adapter=True)")
    return chosen


def _at_precision(model: torch.nn.Module, chosen: str, name: str, chain: list[Path], pad_id: int,
                  threads: int | None) -> torch.nn.Module:
    """``model`` converted to the concrete precision ``chosen`` (a registered model's own int8 graph when it ships
    one and no adapter changes its weights)."""
    if chosen == "bf16":
        return model.to(torch.bfloat16)
    if chosen == "int8-torch":
        return quantize_int8(model)
    if chosen == "bf16-openvino":
        from .openvino_bf16 import load_openvino

        return load_openvino(model, pad_id=pad_id, threads=threads)
    if chosen != "int8-onnx":
        return model
    from .onnx_int8 import OnnxInt8Transformer, load_int8

    shipped = REGISTRY[name].onnx if name in REGISTRY and not chain else None
    if shipped is not None:
        return OnnxInt8Transformer(shipped() / "model_quantized.onnx", model.config, threads=threads)
    return load_int8(model, pad_id=pad_id, threads=threads)


def load(name: str, *, adapter: str | os.PathLike | None = None, merge_adapter: bool = True,
         device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
         max_length: int | None = None, revision: str | None = None, trust_remote_code: bool = False,
         precision: str | None = None, threads: int | None = None, **settings: Any) -> Loaded:
    """Load model ``name`` (see :meth:`lganna_rag.encoder.LGAnnaEncoder.from_pretrained` for the arguments)."""
    from transformers import AutoTokenizer

    if threads is not None:
        torch.set_num_threads(threads)
    directory, chain, overrides = resolve_chain(name, adapter, revision)
    dev = torch.device(device) if device is not None else default_device()
    if dtype is None:
        torch_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    else:
        torch_dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
    model, is_decoder = _weights(directory, torch_dtype, trust_remote_code)
    tok_dir = next((f for f in reversed(chain) if (f / "tokenizer_config.json").is_file()), directory)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=trust_remote_code)
    cfg_dir = next((f for f in reversed(chain) if (f / "lganna.json").is_file()), directory)
    values = {**read_model_config(cfg_dir, is_decoder=is_decoder).__dict__, **overrides, **settings}
    if max_length is not None:
        values["max_length"] = max_length
    model = _apply_adapters(model, chain, merge_adapter)
    model.to(dev).eval()
    chosen = concrete_precision(resolve_precision(precision, dev), is_decoder=is_decoder,
                                dtype_given=dtype is not None and torch_dtype != torch.float32,
                                merged=merge_adapter or not chain,
                                auto_choice=REGISTRY[name].auto_precision if name in REGISTRY and adapter is None
                                else ())
    pad = tokenizer.pad_token_id
    model = _at_precision(model, chosen, name, chain, pad if pad is not None else 0, threads)
    return Loaded(model, tokenizer, ModelConfig(**values), is_decoder, chosen, chain[-1] if chain else None)
