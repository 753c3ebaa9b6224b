"""The instruction-aware embedder: any Hugging Face checkpoint, last-token/mean/CLS pooling.

``LGAnnaEncoder.from_pretrained()`` loads the default model; ``encode_queries`` renders each
query with the task instruction and few-shot examples (see :mod:`lganna_rag.prompts`),
``encode_documents`` embeds plain text. For decoders an EOS token is appended explicitly and
its final hidden state is the embedding (L2-normalised by default).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .models import (
    REGISTRY,
    ModelConfig,
    ModelNotFoundError,
    default_model_name,
    read_model_config,
)
from .prompts import Task, get_task, query_prefix, render_query, uses_instruction

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: ``precision`` values of :meth:`LGAnnaEncoder.from_pretrained`. ``int8-onnx``: ONNX Runtime int8
#: (:mod:`lganna_rag.onnx_int8`; encoders only); ``int8-torch``: PyTorch dynamic quantization
#: (:func:`quantize_int8`). ``int8`` picks ``int8-onnx`` for an encoder when onnxruntime is installed (faster and
#: closer to fp32 in ``benchmarks/results/int8.md``), else ``int8-torch``, so ``--precision int8`` works everywhere.
#: ``auto``: ``int8-onnx`` where it applies (an fp32 encoder on CPU, adapter merged, onnxruntime installed), else fp32.
PRECISIONS = ("auto", "fp32", "int8", "int8-onnx", "int8-torch")
#: Precision on CPU when none is given (``LGANNA_PRECISION`` overrides), chosen by measurement: int8 becomes the
#: default only if it meets both targets (>= 1.8x fp32 texts/s, <= 0.5 points of loss). ``benchmarks/results/int8.json``
#: (``python -m lganna_rag.benchmarks.int8_bench``, quiet machine) has ``int8-onnx`` at 1.56x and +0.30 points
#: (``int8-torch`` 1.34x, -0.95), so fp32; ``auto`` or ``int8`` opt in. Callers that need exact fp32 vectors
#: (training teachers, the quality benchmarks, parity checks) ask for ``fp32`` explicitly.
CPU_DEFAULT_PRECISION = "fp32"
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "1_Pooling/*"]


def pool(
    hidden: torch.Tensor, attention_mask: torch.Tensor, method: str, prompt_lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Pool token states ``(batch, seq, dim)`` into ``(batch, dim)``; works for left and right padding.

    ``last`` takes the last position whose mask is 1, ``cls`` the first, ``mean`` averages them.
    ``prompt_lengths`` (mean only, right padding): the first ``prompt_lengths[i]`` positions of row ``i``
    are left out of the mean (sentence-transformers' ``Pooling(include_prompt=False)``).
    """
    mask = attention_mask.to(hidden.device)
    if method == "mean":
        if prompt_lengths is not None:
            positions = torch.arange(mask.shape[1], device=mask.device)
            mask = mask * (positions.unsqueeze(0) >= prompt_lengths.to(mask.device).unsqueeze(1))
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    seq_len = mask.shape[1]
    positions = torch.arange(seq_len, device=mask.device)
    if method == "last":
        index = (mask * positions).argmax(dim=1)
    elif method == "cls":
        index = (mask * (seq_len - positions)).argmax(dim=1)
    else:
        raise ValueError(f"unknown pooling {method!r}; use 'last', 'mean' or 'cls'")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def check_texts(texts: Any) -> list[str]:
    """Return ``texts`` as a list of str, raising ``TypeError`` that names the first bad item."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str (got {t!r:.60})")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"texts[{i}] has a lone surrogate (U+{ord(t[exc.start]):04X}) at character {exc.start}: not valid "
                f"Unicode, so the tokenizer cannot read it; clean it first, e.g. "
                f"text.encode('utf-8', 'replace').decode('utf-8')"
            ) from None
    return texts


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """PyTorch dynamic int8 quantization of every ``nn.Linear`` (weights int8 per output channel, activations
    quantized per batch). CPU only. Embeddings, norms and attention arithmetic stay float32.

    Per-channel weight scales: on MiniLM they kept the vectors clearly closer to fp32 than per-tensor scales,
    at the same speed. Speed and quality against fp32: ``lganna-rag bench int8`` (``benchmarks/results/int8.md``).
    """
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao; it still works
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """``precision`` checked, or the default: ``LGANNA_PRECISION``, else :data:`CPU_DEFAULT_PRECISION` on CPU, fp32 elsewhere."""
    if precision is None:
        precision = os.environ.get("LGANNA_PRECISION") or (CPU_DEFAULT_PRECISION if device.type == "cpu" else "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto" and device.type != "cpu":
        return "fp32"
    if precision.startswith("int8") and device.type != "cpu":
        raise ValueError(f"precision {precision!r} (dynamic quantization) runs on CPU only, not on {device.type}")
    return precision


def int8_backend(precision: str, *, is_decoder: bool) -> str:
    """The concrete precision: ``int8`` becomes ``int8-onnx`` (an encoder, onnxruntime installed) or ``int8-torch``;
    ``auto`` becomes ``int8-onnx`` or ``fp32``.

    ``int8-onnx`` asked for explicitly raises ``ImportError`` (with the install command) when onnxruntime is
    missing and ``ValueError`` for a decoder; other values are returned unchanged.
    """
    from .onnx_int8 import onnx_available, require_onnx

    if precision in ("int8", "auto"):
        return "int8-onnx" if not is_decoder and onnx_available() else ("int8-torch" if precision == "int8" else "fp32")
    if precision == "int8-onnx":
        if is_decoder:
            raise ValueError("precision 'int8-onnx' supports encoder models only; use 'int8-torch' for a decoder")
        require_onnx()
    return precision


def _is_decoder(hf_config: Any) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return hf_config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _resolve_dir(source: str, revision: str | None) -> Path:
    """A local directory for ``source``: itself, or a hub snapshot (safetensors and configs only)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(f"{source!r} is a file; pass the model's directory")
    if not _HUB_ID.fullmatch(source):
        raise ModelNotFoundError(
            f"no model {source!r}: it is not a local directory, not a registered name "
            f"({', '.join(REGISTRY)}), and not a Hugging Face hub id (org/name)"
        )
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


def _require_safetensors(directory: Path, what: str = "model") -> None:
    if not any(directory.glob("*.safetensors")):
        pickles = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pt*")]
        hint = f" (found {', '.join(pickles)}: pickle files are never loaded; convert them to safetensors)" if pickles else ""
        raise ModelNotFoundError(f"{directory} holds no *.safetensors {what} weights{hint}")


class PromptIgnoredWarning(UserWarning):
    """A task, instruction or few-shot examples were given to a model without a prompt template (no effect)."""


class LGAnnaEncoder:
    """Embeds queries (with instructions and examples) and documents with one transformer."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        config: ModelConfig,
        *,
        name: str = "model",
        is_decoder: bool = True,
    ) -> None:
        """Wrap an already loaded ``model`` and ``tokenizer``; most users call :meth:`from_pretrained`."""
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.name = name
        self.is_decoder = is_decoder
        #: ``fp32``, ``int8-onnx`` or ``int8-torch`` (set by :meth:`from_pretrained`; a model passed in is taken as it is).
        self.precision = "fp32"
        #: The PEFT adapter directory merged into (or applied to) the base weights by :meth:`from_pretrained`.
        self.adapter_dir: Path | None = None
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if config.append_eos and eos is None:
            raise ValueError(f"model {name!r}: append_eos is set but the tokenizer has no EOS token")
        self.eos_token_id: int | None = eos
        pad = tokenizer.pad_token_id
        self.pad_token_id: int = pad if pad is not None else (eos if eos is not None else 0)
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if isinstance(limit, int) and config.max_length > limit:
            config.max_length = limit

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike | None = None,
        *,
        adapter: str | os.PathLike | None = None,
        merge_adapter: bool = True,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        precision: str | None = None,
        **settings: Any,
    ) -> "LGAnnaEncoder":
        """Load a model by registered name, local directory or hub id (``None``: the default model).

        ``adapter`` is a PEFT LoRA directory applied on top, merged into the weights at load (encode speed
        equals the base model's; ``merge_adapter=False`` keeps it separate). ``settings`` override ``lganna.json`` fields (e.g. ``pooling="mean"``).
        Only safetensors weights are loaded; ``trust_remote_code`` is off unless you pass it.
        ``precision="int8"`` runs int8 on CPU: ONNX Runtime (``int8-onnx``, :mod:`lganna_rag.onnx_int8`) for
        an encoder when onnxruntime is installed, else PyTorch dynamic quantization (``int8-torch``,
        :func:`quantize_int8`); see :data:`PRECISIONS`. ``None`` is ``LGANNA_PRECISION`` or
        :data:`CPU_DEFAULT_PRECISION` on CPU.
        """
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        name = str(name_or_path) if name_or_path is not None else default_model_name()
        if name in REGISTRY and REGISTRY[name].kind == "static":
            from .static import StaticEncoder

            return StaticEncoder.from_pretrained(name, max_length=max_length, device=device, precision=precision,
                                                 **settings)
        overrides: dict[str, Any] = {}
        if name in REGISTRY:
            overrides.update(REGISTRY[name].overrides)
            source = REGISTRY[name].locate()
        else:
            source = name
        directory = _resolve_dir(source, revision)

        adapter_dir = Path(adapter).expanduser() if adapter is not None else None
        if adapter_dir is not None and not (adapter_dir / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json)")
        chain = [adapter_dir] if adapter_dir is not None else []  # adapters to apply, innermost first
        while (directory / "adapter_config.json").is_file() and not (directory / "config.json").is_file():
            if len(chain) > 4:
                raise ModelNotFoundError(f"{chain[-1]}: more than 4 adapters stacked over each other")
            chain.insert(0, directory)  # the directory is an adapter (e.g. lganna-minilm): find its base model
            base = read_model_config(directory, is_decoder=True).base_model if (directory / "lganna.json").is_file() else None
            base = base or json.loads((directory / "adapter_config.json").read_text())["base_model_name_or_path"]
            if base in REGISTRY:
                overrides = {**REGISTRY[base].overrides}
                base = REGISTRY[base].locate()
            directory = _resolve_dir(base, None)
        adapter_dir = chain[-1] if chain else None  # the outermost: its lganna.json and tokenizer win

        _require_safetensors(directory)
        try:
            hf_config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
        except ValueError as exc:
            raise ModelNotFoundError(f"{directory}: unsupported model config ({exc})") from exc
        is_decoder = _is_decoder(hf_config)
        dev = torch.device(device) if device is not None else _default_device()
        if dtype is None:
            torch_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        else:
            torch_dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
        from transformers.utils import logging as hf_logging

        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights: 100%" bar on every load (and every CLI command)
        try:
            model = AutoModel.from_pretrained(
                directory, config=hf_config, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code
            )
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        tok_dir = next((f for f in reversed(chain) if (f / "tokenizer_config.json").is_file()), directory)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=trust_remote_code)

        cfg_dir = next((f for f in reversed(chain) if (f / "lganna.json").is_file()), directory)
        config = read_model_config(cfg_dir, is_decoder=is_decoder)
        values = {**config.__dict__, **overrides, **settings}
        if max_length is not None:
            values["max_length"] = max_length
        config = ModelConfig(**values)

        if chain:
            from peft import PeftModel

            for i, folder in enumerate(chain):  # an inner adapter is part of its model: always merged
                _require_safetensors(folder, "adapter")
                model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
                if merge_adapter or i < len(chain) - 1:
                    model = model.merge_and_unload()
        model.to(dev).eval()
        requested = resolve_precision(precision, dev)
        chosen = int8_backend(requested, is_decoder=is_decoder)
        if requested == "auto" and ((dtype is not None and torch_dtype != torch.float32)
                                    or (adapter_dir is not None and not merge_adapter)):
            chosen = "fp32"  # the default quantizes only what it can: fp32 weights, adapters merged
        if chosen != "fp32":
            if dtype is not None and torch_dtype != torch.float32:
                raise ValueError(f"precision {chosen!r} quantizes float32 weights: leave dtype unset (or float32)")
            if adapter_dir is not None and not merge_adapter:
                raise ValueError(f"precision {chosen!r} needs the adapter merged (merge_adapter=True)")
        if chosen == "int8-torch":
            model = quantize_int8(model)
        elif chosen == "int8-onnx":
            from .onnx_int8 import load_int8

            pad = tokenizer.pad_token_id
            model = load_int8(model, pad_id=pad if pad is not None else 0)
        encoder = cls(model, tokenizer, config, name=name, is_decoder=is_decoder)
        encoder.precision = chosen
        encoder.adapter_dir = adapter_dir
        return encoder

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Save weights (safetensors; a PEFT model saves its adapter), tokenizer and ``lganna.json``."""
        if self.precision != "fp32":
            raise ValueError(f"this encoder runs at precision {self.precision!r}: save the fp32 model (load it with "
                             f"precision='fp32') and quantize at load time")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        self.config.save(out)
        return out

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        """The device the model runs on."""
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")  # ONNX Runtime int8: CPU

    @property
    def dimension(self) -> int:
        """Size of the embedding vectors."""
        return int(self.model.config.hidden_size)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"LGAnnaEncoder(name={self.name!r}, dim={self.dimension}, pooling={c.pooling!r}, "
            f"template={c.prompt_template!r}, max_length={c.max_length}, device={self.device})"
        )

    # ------------------------------------------------------------------ tokenisation and forward
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> tuple[list[list[int]], int]:
        """Token ids per text (EOS appended when configured) and how many texts were truncated."""
        max_length = max_length or self.config.max_length
        append = self.config.append_eos
        limit = max_length - 1 if append else max_length
        ids = self.tokenizer(
            list(texts), add_special_tokens=True, truncation=True, max_length=limit,
            return_attention_mask=False, return_token_type_ids=False,
        )["input_ids"]
        at_limit = [i for i, row in enumerate(ids) if len(row) >= limit]
        truncated = 0
        if at_limit:
            from transformers.utils import logging as hf_logging

            previous = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # silence "sequence longer than the model maximum"
            try:
                full = self.tokenizer([texts[i] for i in at_limit], add_special_tokens=True, truncation=False)["input_ids"]
            finally:
                hf_logging.set_verbosity(previous)
            truncated = sum(len(row) > limit for row in full)
        if append:
            eos = self.eos_token_id
            ids = [row if row and row[-1] == eos else row + [eos] for row in ids]
        return ids, truncated

    def collate(self, token_lists: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Right-pad token id lists into ``input_ids`` and ``attention_mask`` tensors on the model device."""
        width = max(len(t) for t in token_lists)
        input_ids = torch.full((len(token_lists), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(token_lists), width), dtype=torch.long)
        for row, toks in enumerate(token_lists):
            input_ids[row, : len(toks)] = torch.as_tensor(toks, dtype=torch.long)
            mask[row, : len(toks)] = 1
        dev = self.device
        return {"input_ids": input_ids.to(dev), "attention_mask": mask.to(dev)}

    def embed(self, batch: dict[str, torch.Tensor], normalize: bool | None = None) -> torch.Tensor:
        """Pooled (and optionally normalised) float32 embeddings of a collated batch; keeps autograd."""
        kwargs: dict[str, Any] = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.is_decoder:
            kwargs["use_cache"] = False
            if "position_ids" in batch:
                kwargs["position_ids"] = batch["position_ids"]
        hidden = self.model(**kwargs).last_hidden_state
        vectors = pool(hidden, batch["attention_mask"], self.config.pooling, batch.get("prompt_length")).float()
        if self.config.normalize if normalize is None else normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
        return vectors

    # ------------------------------------------------------------------ public encoding API
    def _encode_texts(
        self,
        texts: list[str],
        *,
        batch_size: int,
        show_progress_bar: bool | None,
        normalize_embeddings: bool | None,
        max_length: int | None,
        prompt_lengths: Sequence[int] | None = None,
    ) -> np.ndarray:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        ids, truncated = self.tokenize(texts, max_length)
        if truncated:
            logger.warning(
                "%d of %d texts were longer than max_length=%d tokens and were truncated",
                truncated, len(texts), max_length or self.config.max_length,
            )
        return self.encode_ids(ids, batch_size=batch_size, show_progress_bar=show_progress_bar,
                               normalize_embeddings=normalize_embeddings, prompt_lengths=prompt_lengths)

    def encode_ids(
        self,
        ids: Sequence[Sequence[int]],
        *,
        batch_size: int = 32,
        show_progress_bar: bool | None = False,
        normalize_embeddings: bool | None = None,
        prompt_lengths: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Embed texts already tokenised by :meth:`tokenize`, in length-sorted batches; rows in input order.

        ``prompt_lengths[i]`` leading tokens of text ``i`` are left out of a mean pool (see :func:`pool`).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not ids:
            return np.zeros((0, self.dimension), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        n_batches = (len(order) + batch_size - 1) // batch_size
        if show_progress_bar is None:
            show_progress_bar = n_batches > 16 and sys.stderr.isatty()
        from tqdm.auto import tqdm

        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), total=n_batches, desc="Encoding",
                              disable=not show_progress_bar, unit="batch"):
                index = order[start : start + batch_size]
                batch = self.collate([ids[i] for i in index])
                if prompt_lengths is not None:
                    batch["prompt_length"] = torch.as_tensor([prompt_lengths[i] for i in index], device=self.device)
                vectors = self.embed(batch, normalize=normalize_embeddings)
                out[index] = vectors.cpu().numpy()
        return out

    def encode(
        self,
        texts: str | Sequence[str],
        prompt: str | None = None,
        *,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        normalize_embeddings: bool | None = None,
        max_length: int | None = None,
        convert_to_numpy: bool = True,
    ) -> np.ndarray:
        """Embed ``texts`` as given, with ``prompt`` (a literal prefix) prepended when set.

        Returns a float32 array ``(len(texts), dim)``, or ``(dim,)`` for a single string.
        ``normalize_embeddings`` defaults to the model's setting (normally True).
        """
        if not convert_to_numpy:
            raise ValueError("only numpy output is supported (convert_to_numpy=True)")
        single = isinstance(texts, str)
        items = check_texts([texts] if single else texts)
        if prompt:
            items = [prompt + t for t in items]
        out = self._encode_texts(items, batch_size=batch_size, show_progress_bar=show_progress_bar,
                                 normalize_embeddings=normalize_embeddings, max_length=max_length)
        return out[0] if single else out

    def render_queries(
        self, texts: Sequence[str], task: Task | str | None = None, examples: Iterable[Sequence[str]] | None = None
    ) -> list[str]:
        """The exact strings ``encode_queries`` feeds the model (before tokenisation)."""
        items = check_texts(texts)
        template = self.config.prompt_template
        if template is None:
            if (task is not None or examples) and not getattr(self, "_warned_prompt_ignored", False):
                self._warned_prompt_ignored = True
                warnings.warn(
                    f"model {self.name!r} has no prompt template (it was not trained with instructions): the task, "
                    f"instruction and few-shot examples have no effect; queries are embedded as plain text",
                    PromptIgnoredWarning, stacklevel=3,
                )
            return items
        resolved = get_task(task if task is not None else self.config.default_task, examples)
        if not uses_instruction(resolved, self.config.instruction_task_types):
            return items  # trained without instructions for this task type (lganna.json: instruction_task_types)
        return [self.fit_query(t, resolved) for t in items]

    def fit_query(self, text: str, task: Task, max_length: int | None = None) -> str:
        """Render ``text`` for ``task``, dropping the earliest few-shot examples until it fits ``max_length`` tokens.

        Truncation keeps the start of a text, so an over-long prompt would otherwise lose the query
        itself (and, with last-token pooling, the token the embedding is read from).
        """
        template = self.config.prompt_template or "e5"
        rendered = render_query(text, task, template)
        if not task.examples:
            return rendered
        limit = (max_length or self.config.max_length) - int(self.config.append_eos)
        examples = list(task.examples)
        while examples and len(self.tokenizer(rendered, add_special_tokens=True)["input_ids"]) > limit:
            examples.pop(0)
            rendered = render_query(text, task.with_examples(examples), template)
        return rendered

    def encode_queries(
        self,
        texts: str | Sequence[str],
        task: Task | str | None = None,
        examples: Iterable[Sequence[str]] | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed queries with a task instruction and optional few-shot ``(query, response)`` examples.

        ``task`` is a :class:`~lganna_rag.prompts.Task` or a registered name (``"retrieval"``,
        ``"sts"``, ``"SciFact"``, ...); ``None`` uses the model's default task. Models without a
        prompt template (e.g. ``minilm``) embed queries as plain text, and so do models trained with
        instructions only for some task types (``instruction_task_types``) for the other types.
        """
        single = isinstance(texts, str)
        items = check_texts([texts] if single else texts)
        rendered = self.render_queries(items, task, examples)
        if not self.excludes_prompt or rendered == items:
            out = self.encode(rendered, **kwargs)
            return out[0] if single else out
        normalize = kwargs.pop("normalize_embeddings", None)
        out = self._encode_texts(rendered, batch_size=kwargs.pop("batch_size", 32),
                                 show_progress_bar=kwargs.pop("show_progress_bar", None),
                                 normalize_embeddings=normalize, max_length=kwargs.pop("max_length", None),
                                 prompt_lengths=self._prompt_lengths(rendered, items))
        if kwargs:
            raise TypeError(f"encode_queries got unexpected keyword arguments {sorted(kwargs)}")
        return out[0] if single else out

    def _prompt_lengths(self, rendered: Sequence[str], items: Sequence[str]) -> list[int]:
        """Per query, the positions of its rendered prompt that a mean pool leaves out."""
        known: dict[str | None, int] = {}  # one task's queries share a prefix: tokenise it once
        lengths = []
        for r, t in zip(rendered, items):
            prefix = query_prefix(r, t)
            if prefix not in known:
                known[prefix] = self.prompt_length(prefix)
            lengths.append(known[prefix])
        return lengths

    def query_batch(self, texts: Sequence[str], task: Task | str | None = None,
                    max_length: int | None = None) -> dict[str, torch.Tensor]:
        """A collated batch of queries as :meth:`encode_queries` feeds the model (instruction, prompt lengths):
        :meth:`embed` of it keeps autograd, for training a query encoder."""
        items = check_texts(texts)
        rendered = self.render_queries(items, task)
        batch = self.collate(self.tokenize(rendered, max_length)[0])
        if self.excludes_prompt and rendered != items:
            batch["prompt_length"] = torch.as_tensor(self._prompt_lengths(rendered, items), device=self.device)
        return batch

    @property
    def excludes_prompt(self) -> bool:
        """True when instruction and example tokens are attended to but left out of the pooled mean."""
        return self.config.pooling == "mean" and not self.config.include_prompt

    def prompt_length(self, prefix: str | None) -> int:
        """Positions masked out of the mean for a query whose rendered prompt is ``prefix``.

        The rule of sentence-transformers (``Transformer._get_prompt_length``): the prefix tokenised
        with special tokens, less a trailing special token, so ``SentenceTransformer(path).encode(q,
        prompt=prefix)`` gives the same vector.
        """
        if not prefix:
            return 0
        ids = self.tokenizer(prefix, add_special_tokens=True)["input_ids"]
        if ids and ids[-1] in set(self.tokenizer.all_special_ids):
            return len(ids) - 1
        return len(ids)

    def encode_documents(self, texts: str | Sequence[str], **kwargs: Any) -> np.ndarray:
        """Embed documents as plain text (no instruction)."""
        return self.encode(texts, **kwargs)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix between two sets of vectors."""
        a = np.atleast_2d(a).astype(np.float32)
        b = np.atleast_2d(b).astype(np.float32)
        a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(min=1e-12)
        b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(min=1e-12)
        return a @ b.T
