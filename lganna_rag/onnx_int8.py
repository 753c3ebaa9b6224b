"""ONNX Runtime int8 inference for encoder models (``precision="int8-onnx"``; optional extra ``onnx``).

The loaded transformer (after any adapter merge) is exported to ONNX once per weight fingerprint into
``cache_dir()/onnx/<fingerprint>/model-int8.onnx``, its weights quantized with
``onnxruntime.quantization.quantize_dynamic`` (int8 per output channel, activations quantized per batch at
run time), and run by an ``onnxruntime.InferenceSession``. Only the transformer forward changes: the
encoder's own pooling, prompt masking and normalisation run on the hidden states it returns.

Choices, each measured on MiniLM with ``/tmp`` scripts on a 2-core AMX/VNNI CPU (cosine to fp32 vectors of
300 real texts; speed is noisy on that busy machine, the committed ratios are in ``benchmarks/results/int8.md``):

* the TorchScript exporter (``dynamo=False``) with eager attention: ONNX Runtime fuses its graph into
  ``Attention`` nodes, which quantize to ``QAttention`` (1.6-1.9x torch fp32 at one thread); the
  ``torch.export`` exporter's graph (it also needs ``onnxscript``) did not fuse and ran at 1.2-1.4x.
  The TorchScript exporter is deprecated in torch >= 2.9 but present in torch 2.13; if a torch release
  drops it, loading fails with a clear error and ``int8-torch`` still works;
* per-channel weight scales: min/mean cosine 0.989/0.994 against 0.90/0.96 with per-tensor scales, at
  about the same speed; ``reduce_range`` (7-bit weights, for CPUs without VNNI) fell to 0.65/0.86, so it
  is off: on AVX2 CPUs without VNNI the u8 x s8 kernels may saturate (use ``int8-torch`` there);
* all quantizable ops (MatMul, Attention, the embedding Gather): quantizing only MatMul kept the fused
  attention in fp32 and was slower for no clear quality gain.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

#: Bump when the export or quantization recipe changes: cached files of another version are not reused.
RECIPE_VERSION = 1
#: ``quantize_dynamic`` settings (see the module docstring for why).
QUANT_SETTINGS: dict[str, Any] = {"per_channel": True, "reduce_range": False, "weight_type": "QInt8"}


def _missing() -> list[str]:
    """Which of ``onnxruntime`` and ``onnx`` (for the export and quantization) are not installed."""
    return [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]


def onnx_available() -> bool:
    """True when ``onnxruntime`` and ``onnx`` are installed."""
    return not _missing()


def require_onnx() -> None:
    """Raise ``ImportError`` with the install command when ONNX Runtime int8 cannot run here."""
    missing = _missing()
    if missing:
        raise ImportError(
            f"precision 'int8-onnx' needs {' and '.join(missing)} (not installed): pip install 'lganna-rag[onnx]' "
            f"(or pip install onnxruntime onnx); precision 'int8-torch' quantizes with PyTorch alone"
        )


def fingerprint(model: torch.nn.Module) -> str:
    """A hash of the model's class, config and every weight tensor, plus the recipe and library versions."""
    import onnxruntime
    import transformers

    h = hashlib.blake2b(digest_size=16)
    config = getattr(model, "config", None)
    meta = {"class": type(model).__name__, "config": config.to_dict() if config is not None else None,
            "recipe": RECIPE_VERSION, "quant": QUANT_SETTINGS, "torch": torch.__version__,
            "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _QuietQuantizer(logging.Filter):
    """Drops onnxruntime's "consider pre-processing" hint (about static quantization; ours is dynamic)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the hint, True for everything else."""
        return "pre-processing before quantization" not in record.getMessage()


class _HiddenStates(torch.nn.Module):
    """``(input_ids, attention_mask) -> last_hidden_state``: the graph that is exported."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The transformer's last hidden states."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _sample_batch(pad_id: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A right-padded batch of two rows of different lengths (so no all-ones mask shortcut is traced)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, min(vocab, 20000), (2, 24), generator=g)
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[1, 13:] = 0
    ids[1, 13:] = pad_id
    return ids, mask


def export_fp32(model: torch.nn.Module, path: Path, *, pad_id: int) -> Path:
    """Export ``model`` (a Hugging Face encoder, fp32, CPU) to an ONNX file at ``path`` (``input_ids``,
    ``attention_mask`` -> ``last_hidden_state``), checked against torch on a padded batch."""
    import copy

    import onnxruntime as ort

    vocab = int(getattr(model.config, "vocab_size", 30000))
    ids, mask = _sample_batch(pad_id, vocab)
    eager = copy.deepcopy(model).float().eval()
    if hasattr(eager, "set_attn_implementation"):
        eager.set_attn_implementation("eager")  # ONNX Runtime fuses this graph into Attention (see module docstring)
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        try:
            torch.onnx.export(
                _HiddenStates(eager), (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
            )
        except Exception as exc:
            raise RuntimeError(f"could not export {type(model).__name__} to ONNX ({type(exc).__name__}: {exc}); "
                               f"use precision 'int8-torch'") from exc
        want = _HiddenStates(model.eval())(ids, mask).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    valid = mask.numpy().astype(bool)
    error = float(np.abs(got[valid] - want[valid]).max())
    if error > 1e-3:  # a wrong export (e.g. a traced shortcut) must never be cached silently
        raise RuntimeError(f"the ONNX export of {type(model).__name__} differs from torch by {error:.2e}")
    return path


def export_int8(model: torch.nn.Module, out: Path, *, pad_id: int) -> Path:
    """Export ``model`` to ONNX (:func:`export_fp32`, beside ``out`` as ``model-fp32.onnx``), quantize its weights to
    ``out`` (:data:`QUANT_SETTINGS`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path = export_fp32(model, out.with_name("model-fp32.onnx"), pad_id=pad_id)
    quiet = _QuietQuantizer()
    logging.getLogger().addFilter(quiet)  # the quantizer logs a generic pre-processing hint on the root logger
    try:
        quantize_dynamic(
            fp32_path, out, weight_type=getattr(QuantType, QUANT_SETTINGS["weight_type"]),
            per_channel=QUANT_SETTINGS["per_channel"], reduce_range=QUANT_SETTINGS["reduce_range"],
            extra_options={"DefaultTensorType": 1},  # FLOAT, where ONNX shape inference leaves a type open
        )
    finally:
        logging.getLogger().removeFilter(quiet)
    return out


def cached_export(model: torch.nn.Module, file_name: str, build: Callable[[Path], Any], *, what: str,
                  cache: Path | None = None, progress: bool = True) -> Path:
    """``cache_dir()/onnx/<fingerprint>/<file_name>`` for ``model``, made on first use by ``build(path)``.

    Written atomically: ``build`` fills a temporary folder next to the cached file, which is then renamed into
    place, so an interrupted export leaves nothing that a later load would take for a finished one.
    """
    from .models import cache_dir

    path = (cache or cache_dir() / "onnx") / fingerprint(model) / file_name
    if not path.is_file():
        if progress:
            print(f"exporting {type(model).__name__} to {what} (once, cached in {path.parent}) ...", file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
            build(Path(tmp) / file_name)
            os.replace(Path(tmp) / file_name, path)
    return path


class OnnxInt8Transformer(torch.nn.Module):
    """Stands in for the Hugging Face model in :class:`~lganna_rag.encoder.LGAnnaEncoder`: same ``config``,
    ``forward(input_ids=, attention_mask=)`` returning an object with ``last_hidden_state``, run by ONNX Runtime."""

    def __init__(self, path: Path, config: Any, *, threads: int | None = None) -> None:
        """Open ``path`` (a quantized ONNX file) with ``threads`` intra-op threads (default: torch's thread count)."""
        import onnxruntime as ort

        super().__init__()
        self.config = config
        self.path = Path(path)
        self.name_or_path = str(getattr(config, "_name_or_path", "") or self.path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> Any:
        """Last hidden states as a float32 CPU tensor (``.last_hidden_state``)."""
        from transformers.modeling_outputs import BaseModelOutput

        ids = input_ids.cpu().numpy().astype(np.int64)
        feed = {"input_ids": ids, "attention_mask": attention_mask.cpu().numpy().astype(np.int64)}
        if "token_type_ids" in self._inputs:  # BERT graphs exported with segment ids (all zero: one text)
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(["last_hidden_state"], feed)[0]
        return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden))


def load_int8(model: torch.nn.Module, *, pad_id: int, threads: int | None = None, cache: Path | None = None,
              progress: bool = True) -> OnnxInt8Transformer:
    """The ONNX Runtime int8 version of ``model``: exported and quantized on first use, then read from the cache."""
    require_onnx()
    path = cached_export(model, "model-int8.onnx", lambda out: export_int8(model, out, pad_id=pad_id),
                         what="ONNX int8", cache=cache, progress=progress)
    return OnnxInt8Transformer(path, model.config, threads=threads)
