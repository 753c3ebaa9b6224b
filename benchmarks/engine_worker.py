"""One embedding engine in its own process, driven by :mod:`lganna_rag.benchmarks.engines` over stdin/stdout.

Standalone on purpose (stdlib + numpy + the engine's own library): the peer engines (sentence-transformers with
its ONNX backends, fastembed) run from another virtualenv, where lganna-rag is not installed. One JSON command per
line on stdin, one JSON answer per line on stdout:

- ``{"cmd": "time", "texts": PATH, "batch": 32}``: embed the texts of a JSON file once; answers ``{"seconds"}``;
- ``{"cmd": "embed", "texts": PATH, "out": PATH.npy}``: embed them and save the vectors (float32, L2-normalised);
- ``{"cmd": "quit"}``.

Engines (``--engine``): ``lganna:PRECISION`` (lganna-rag's encoder), ``variant:NAME`` (the runtimes lganna-rag could use
instead, built here from its fp32 ONNX export: ``ort-int8-opt`` ONNX Runtime's transformer optimizer then dynamic int8,
``ort-int8-static`` the optimizer then static int8 calibrated on training texts, ``openvino-fp32``; OpenVINO bf16 is
lganna-rag's own ``bf16-openvino``),
``st`` (sentence-transformers, PyTorch fp32),
``st-onnx`` (its ONNX Runtime backend), ``st-onnx-qint8`` (its dynamically quantized ONNX export), ``fastembed``
(fastembed's TextEmbedding from a local folder, registered as a custom model).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _normalise(vectors: Any) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True).clip(min=1e-12)


def _lganna(model: str, precision: str, threads: int, max_length: int) -> Callable[[list[str], int], np.ndarray]:
    from lganna_rag import LGAnnaEncoder

    enc = LGAnnaEncoder.from_pretrained(model, precision=precision, threads=threads, device="cpu")
    return lambda texts, batch: enc.encode(texts, batch_size=batch, max_length=max_length, show_progress_bar=False)


def _calibration_texts(n: int = 96) -> list[str]:
    """Training-side texts (never evaluation texts) to calibrate static int8 activations on."""
    root = Path(os.environ.get("LGANNA_DATA", "../shared/data")) / "train"
    texts: list[str] = []
    for name in ("squad_du.jsonl", "medquad.jsonl", "agnews.jsonl"):
        with open(root / name, encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i >= n // 6:
                    break
                row = json.loads(line)
                texts += [row["query"], row["positive"]]
    return texts


def _variant(model: str, kind: str, threads: int, max_length: int, work: Path) -> Callable[[list[str], int], np.ndarray]:
    """lganna-rag's encoder with its transformer replaced by another runtime's build of the same weights."""
    from lganna_rag import LGAnnaEncoder
    from lganna_rag.onnx_int8 import OnnxInt8Transformer, export_fp32

    enc = LGAnnaEncoder.from_pretrained(model, precision="fp32", threads=threads, device="cpu")
    config = enc.model.config
    fp32 = export_fp32(enc.model, work / "fp32.onnx", pad_id=enc.pad_token_id)
    if kind == "openvino-fp32":  # lganna-rag's bf16-openvino path with the f32 hint
        from lganna_rag.openvino_bf16 import OpenVinoTransformer

        enc.model = OpenVinoTransformer(fp32, config, threads=threads, hint="f32")
    else:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
        from onnxruntime.transformers import optimizer

        opt = optimizer.optimize_model(str(fp32), model_type="bert", num_heads=config.num_attention_heads,
                                       hidden_size=config.hidden_size)
        opt.save_model_to_file(str(work / "opt.onnx"))
        out = work / "int8.onnx"
        if kind == "ort-int8-opt":
            quantize_dynamic(work / "opt.onnx", out, weight_type=QuantType.QInt8, per_channel=True,
                             extra_options={"DefaultTensorType": 1})
        else:
            ids = enc.tokenize(_calibration_texts(), 128)[0]
            feeds = [{k: v.numpy() for k, v in enc.collate(ids[i:i + 16]).items()} for i in range(0, len(ids), 16)]

            class Reader(CalibrationDataReader):
                def get_next(self) -> dict[str, Any] | None:
                    return feeds.pop() if feeds else None

            quantize_static(work / "opt.onnx", out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            extra_options={"DefaultTensorType": 1})
        enc.model = OnnxInt8Transformer(out, config, threads=threads)
    return lambda texts, batch: enc.encode(texts, batch_size=batch, max_length=max_length, show_progress_bar=False)


def _st(folder: str, backend: str, threads: int, max_length: int, work: Path) -> Callable[[list[str], int], np.ndarray]:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    kwargs: dict[str, Any] = {"device": "cpu"}
    if backend != "torch":  # the ONNX backends write their export into the model folder: use a copy
        copy = work / "st-model"
        if not copy.exists():
            shutil.copytree(folder, copy, symlinks=False)
        folder = str(copy)
        kwargs["backend"] = "onnx"
        kwargs["model_kwargs"] = {"provider": "CPUExecutionProvider",
                                  "provider_options": None, "session_options": _ort_options(threads)}
        if backend == "onnx-qint8":
            from sentence_transformers import export_dynamic_quantized_onnx_model

            base = SentenceTransformer(folder, **kwargs)
            export_dynamic_quantized_onnx_model(base, "avx512_vnni", folder)
            kwargs["model_kwargs"]["file_name"] = "onnx/model_qint8_avx512_vnni.onnx"
    model = SentenceTransformer(folder, **kwargs)
    model.max_seq_length = max_length
    return lambda texts, batch: model.encode(texts, batch_size=batch, normalize_embeddings=True,
                                             convert_to_numpy=True, show_progress_bar=False)


def _ort_options(threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return options


def _fastembed(folder: str, pooling: str, threads: int, max_length: int) -> Callable[[list[str], int], np.ndarray]:
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    name = f"local/{Path(folder).name}"
    TextEmbedding.add_custom_model(model=name, pooling=PoolingType.CLS if pooling == "cls" else PoolingType.MEAN,
                                   normalization=True, sources=ModelSource(hf=name), dim=384,
                                   model_file="model.onnx")
    model = TextEmbedding(model_name=name, specific_model_path=folder, threads=threads, lazy_load=False)
    model.model.tokenizer.enable_truncation(max_length=max_length)
    return lambda texts, batch: _normalise(list(model.embed(texts, batch_size=batch)))


def main() -> None:
    """Load the engine, then answer commands until ``quit``."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", required=True)
    ap.add_argument("--model", required=True, help="lganna: a model name; others: a model folder")
    ap.add_argument("--pooling", default="mean")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.engine.startswith("lganna:"):
        embed = _lganna(args.model, args.engine.split(":", 1)[1], args.threads, args.max_length)
    elif args.engine.startswith("variant:"):
        embed = _variant(args.model, args.engine.split(":", 1)[1], args.threads, args.max_length, work)
    elif args.engine.startswith("st"):
        embed = _st(args.model, {"st": "torch", "st-onnx": "onnx", "st-onnx-qint8": "onnx-qint8"}[args.engine],
                    args.threads, args.max_length, work)
    elif args.engine == "fastembed":
        embed = _fastembed(args.model, args.pooling, args.threads, args.max_length)
    else:
        raise SystemExit(f"unknown engine {args.engine!r}")
    embed(["warm up the engine with a short text"] * 4, 4)
    print(json.dumps({"loaded": round(time.perf_counter() - t0, 2)}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            return
        texts = json.loads(Path(cmd["texts"]).read_text(encoding="utf-8"))
        start = time.perf_counter()
        vectors = embed(texts, int(cmd.get("batch", 32)))
        seconds = time.perf_counter() - start
        if cmd["cmd"] == "embed":
            np.save(cmd["out"], _normalise(vectors), allow_pickle=False)
        print(json.dumps({"seconds": seconds, "n": len(texts)}), flush=True)


if __name__ == "__main__":
    main()
