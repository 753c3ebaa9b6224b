"""OpenVINO bfloat16 inference for encoder models (``precision="bf16-openvino"``).

The loaded transformer (after any adapter merge) is exported to ONNX in float32 once per weight fingerprint
(:func:`lganna_rag.onnx_int8.export_fp32`, checked against torch) into
``cache_dir()/onnx/<fingerprint>/model-fp32.onnx``, compiled by OpenVINO's CPU plugin with the ``bf16`` inference
precision hint (bf16 matrix products on AMX / AVX-512 BF16, accumulation and the softmax / LayerNorm statistics in
float32) and checked against the torch model once more on a padded batch. Only the transformer forward changes: the
encoder's own pooling, prompt masking and normalisation run on the hidden states it returns.

Why it exists, measured by ``lganna-rag bench engines`` (README, Speed; ``benchmarks/results/engines.md``): on a
2-core CPU with AVX-512 BF16 (no AMX), 2 threads, 128-token passages, it ran MiniLM at 3.71x and bge-small at 4.31x
PyTorch fp32, with vectors at cosine 1.0000 to fp32, where PyTorch bf16 reached 2.69x / 3.33x and ONNX Runtime
int8 (3.15x / 4.18x) failed the quality rule.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: The lowest cosine between OpenVINO's bf16 hidden states and torch fp32's, per token of the check batch, that a
#: compiled model may have (measured: 0.99995 to 0.99998 for minilm, bge-small and their bundled adapters).
MIN_TOKEN_COSINE = 0.99


def openvino_available() -> bool:
    """True when the ``openvino`` package is installed."""
    return importlib.util.find_spec("openvino") is not None


def require_openvino() -> None:
    """Raise ``ImportError`` with the install command when OpenVINO is not installed."""
    if not openvino_available():
        raise ImportError("precision 'bf16-openvino' needs OpenVINO (a dependency of lganna-rag that is missing here): "
                          "pip install openvino; precision 'bf16' runs bfloat16 with PyTorch alone")


class OpenVinoTransformer(torch.nn.Module):
    """Stands in for the Hugging Face model in :class:`~lganna_rag.encoder.LGAnnaEncoder`: same ``config``,
    ``forward(input_ids=, attention_mask=)`` returning an object with ``last_hidden_state``, run by OpenVINO."""

    def __init__(self, path: Path, config: Any, *, threads: int | None = None, hint: str = "bf16") -> None:
        """Compile ``path`` (an fp32 ONNX file) for the CPU with inference precision ``hint`` (``bf16`` or ``f32``)
        and ``threads`` threads (default: torch's thread count)."""
        import openvino as ov

        super().__init__()
        self.config = config
        self.path = Path(path)
        self.name_or_path = str(getattr(config, "_name_or_path", "") or self.path)
        self.threads = threads or torch.get_num_threads()
        self.compiled = ov.Core().compile_model(str(self.path), "CPU", {
            "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY"})
        self._requests = threading.local()  # an infer request is not shared between threads (the server's pool)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> Any:
        """Last hidden states as a float32 CPU tensor (``.last_hidden_state``)."""
        from transformers.modeling_outputs import BaseModelOutput

        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        out = request.infer({"input_ids": input_ids.cpu().numpy().astype(np.int64),
                             "attention_mask": attention_mask.cpu().numpy().astype(np.int64)})
        hidden = np.array(out[self.compiled.output(0)], dtype=np.float32)  # a copy: the request reuses its buffer
        return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden))


def check_against(model: torch.nn.Module, compiled: OpenVinoTransformer, *, pad_id: int) -> float:
    """The lowest per-token cosine between ``compiled``'s and ``model``'s (torch fp32) hidden states on a padded
    batch; ``RuntimeError`` below :data:`MIN_TOKEN_COSINE`."""
    from .onnx_int8 import _sample_batch

    ids, mask = _sample_batch(pad_id, int(getattr(model.config, "vocab_size", 30000)))
    with torch.no_grad():
        want = model.eval()(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    got = compiled(input_ids=ids, attention_mask=mask).last_hidden_state
    valid = mask.bool()
    cosine = float(torch.nn.functional.cosine_similarity(got[valid], want[valid], dim=-1).min())
    if cosine < MIN_TOKEN_COSINE:
        raise RuntimeError(f"OpenVINO's bf16 build of {type(model).__name__} differs from torch fp32 (lowest token "
                           f"cosine {cosine:.4f} < {MIN_TOKEN_COSINE}); use precision 'bf16' or 'fp32'")
    return cosine


def load_openvino(model: torch.nn.Module, *, pad_id: int, threads: int | None = None, cache: Path | None = None,
                  progress: bool = True) -> OpenVinoTransformer:
    """The OpenVINO bf16 version of ``model`` (an fp32 encoder on the CPU): exported on first use, then read from the
    cache; checked against ``model`` (:func:`check_against`) every time it is compiled."""
    require_openvino()
    from .onnx_int8 import cached_export, export_fp32, require_onnx

    require_onnx()  # the export is checked with ONNX Runtime
    path = cached_export(model, "model-fp32.onnx", lambda out: export_fp32(model, out, pad_id=pad_id),
                         what="ONNX for OpenVINO", cache=cache, progress=progress)
    compiled = OpenVinoTransformer(path, model.config, threads=threads)
    check_against(model, compiled, pad_id=pad_id)
    return compiled
