"""Load an lganna-rag model directory (full weights, or a LoRA adapter over a base) as a ``SentenceTransformer``.

``SentenceTransformer(path)`` loads full-weight lganna-rag directories directly. For adapter
directories sentence-transformers goes through transformers' PEFT integration, which needs a newer
``peft`` than PyPI has today; :func:`load_sentence_transformer` instead loads the base, applies and
merges the adapter with PEFT, and restores the exported pooling (``include_prompt``) and prompts, so
``model.encode(q, prompt_name="SciFact")`` gives the vectors ``LGAnnaEncoder.encode_queries`` gives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..models import REGISTRY


def load_sentence_transformer(name_or_path: str, device: str | None = None) -> Any:
    """A ``SentenceTransformer`` for a registered name or an lganna-rag directory (adapters merged)."""
    from sentence_transformers import SentenceTransformer

    path = Path(REGISTRY[name_or_path].locate() if name_or_path in REGISTRY else name_or_path)
    if not (path / "adapter_config.json").is_file() or (path / "config.json").is_file():
        return SentenceTransformer(str(path), device=device, trust_remote_code=False)
    from peft import PeftModel

    settings = json.loads((path / "lganna.json").read_text(encoding="utf-8"))
    base = settings.get("base_model") or json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    base_dir = REGISTRY[base].locate() if base in REGISTRY else base
    model = SentenceTransformer(base_dir, device=device, trust_remote_code=False)
    transformer = model[0]
    transformer.model = PeftModel.from_pretrained(transformer.model, str(path), is_trainable=False).merge_and_unload()
    pooling_cfg = path / "1_Pooling" / "config.json"
    if pooling_cfg.is_file():
        model[1].include_prompt = json.loads(pooling_cfg.read_text()).get("include_prompt", True)
    st_cfg = path / "config_sentence_transformers.json"
    if st_cfg.is_file():
        model.prompts = json.loads(st_cfg.read_text()).get("prompts", {})
    if settings.get("max_length"):
        model.max_seq_length = int(settings["max_length"])
    return model.eval()
