"""Ship a trained export inside the package (``lganna_rag/weights/NAME``) and record its ``bench quality`` scores.

    python -m lganna_rag.training.bundle runs/lganna-minilm/final --name lganna-minilm
    python -m lganna_rag.training.bundle runs/lganna-minilm/final --name lganna-minilm \
        --checkpoint runs/lganna-minilm/checkpoint-400 --selection runs/select/checkpoint-400.select.json
    python -m lganna_rag.training.bundle --name lganna-minilm --scores benchmarks/results/lganna-minilm.json
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from statistics import mean
from typing import Any

from lganna_rag.benchmarks.report import type_averages
from lganna_rag.models import ModelConfig, bundled_weights_dir

#: Files of an export that are shipped (checkpoints, model cards and optimizer state are not).
SHIPPED = ("adapter_model.safetensors", "adapter_config.json", "model.safetensors", "config.json", "tokenizer.json",
           "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "modules.json", "sentence_bert_config.json",
           "config_sentence_transformers.json", "lganna.json", "1_Pooling/config.json")


def checkpoint_provenance(checkpoint: Path, selection: Path | None = None) -> dict[str, Any]:
    """What ``lganna.json`` records for an adapter taken from a Trainer checkpoint instead of the run's export:
    its step, its in-training dev scores, the run's wall time up to its last checkpoint, and the selection result
    (``training.select score``) it was chosen by."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    step = int(state["global_step"])
    evals = [h for h in state["log_history"] if h.get("step") == step and any(k.startswith("eval_") for k in h)]
    out: dict[str, Any] = {"steps": step, "best_checkpoint": str(checkpoint),
                           "dev_end": {k.removeprefix("eval_"): v for k, v in (evals[-1] if evals else {}).items()
                                       if k.startswith("eval_dev")}}
    wall = checkpoint.parent / "wall_time.json"
    if wall.is_file():
        out["wall_time_s"] = round(json.loads(wall.read_text())["seconds"], 1)
    if selection is not None:
        out.update(selection_provenance(selection))
    return out


def selection_provenance(selection: Path) -> dict[str, Any]:
    """The ``training.select score`` result a shipped variant was chosen by (its file, score and type means)."""
    chosen = json.loads(selection.read_text())
    return {"selected_by": {"file": str(selection), "selection_score": chosen["selection_score"],
                            "by_type": chosen["by_type"], "rule": "highest training.select score"}}


def bundle(src: Path, name: str, dst: Path | None = None, checkpoint: Path | None = None,
           selection: Path | None = None) -> Path:
    """Copy the shipped files of the export ``src`` into the package's weights folder (or ``dst``); with
    ``checkpoint``, that Trainer checkpoint's adapter replaces the export's (same run, another step), recorded
    with :func:`checkpoint_provenance`."""
    if not (src / "lganna.json").is_file():
        raise FileNotFoundError(f"{src} is not an lganna-rag export (no lganna.json)")
    if checkpoint is not None and not (checkpoint / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(f"{checkpoint} is not an adapter checkpoint (no adapter_model.safetensors)")
    dst = dst or bundled_weights_dir() / name
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in SHIPPED:
        if (src / rel).is_file():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, tmp / rel)
            (tmp / rel).chmod(0o644)
    (tmp / "2_Normalize").mkdir(exist_ok=True)
    config = ModelConfig.from_dict(json.loads((tmp / "lganna.json").read_text()))
    if checkpoint is not None:
        shutil.copy2(checkpoint / "adapter_model.safetensors", tmp / "adapter_model.safetensors")
        (tmp / "adapter_model.safetensors").chmod(0o644)
        config.provenance.update(checkpoint_provenance(checkpoint, selection))
    elif selection is not None:
        config.provenance.update(selection_provenance(selection))
    config.provenance["reproduce"] = f"lganna-rag train training/configs/{name}.yaml && python -m lganna_rag.training.bundle <export> --name {name}"
    config.save(tmp)
    if (tmp / "adapter_config.json").is_file():  # the base is found through lganna.json's base_model, not this path
        cfg = json.loads((tmp / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = config.base_model
        (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def record_scores(results: Path, name: str, dst: Path | None = None) -> dict[str, Any]:
    """Copy each task's main score and the means per task type of a ``bench quality`` JSON into ``lganna.json``."""
    dst = dst or bundled_weights_dir() / name
    result = json.loads(results.read_text())
    tasks = result["tasks"]
    summary = {"source": str(results), "mean": round(mean(t["main_score"] for t in tasks.values()), 2),
               "by_type": dict(sorted(type_averages(result).items())),
               "tasks": {n: t["main_score"] for n, t in tasks.items()}}
    config = ModelConfig.from_dict(json.loads((dst / "lganna.json").read_text()))
    config.provenance["benchmark"] = summary
    config.save(dst)
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line for :func:`bundle` and :func:`record_scores`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", help="an export directory (e.g. runs/lganna-minilm/final)")
    parser.add_argument("--name", required=True, help="bundled model name (folder under lganna_rag/weights)")
    parser.add_argument("--dest", help="target directory (default: the package's weights/NAME)")
    parser.add_argument("--checkpoint", help="ship this Trainer checkpoint's adapter (same run as SOURCE)")
    parser.add_argument("--selection", help="the training.select result the checkpoint (or SOURCE) was chosen by")
    parser.add_argument("--scores", help="a bench quality result JSON to record in lganna.json")
    args = parser.parse_args(argv)
    dst = Path(args.dest) if args.dest else None
    if args.source:
        checkpoint = Path(args.checkpoint) if args.checkpoint else None
        selection = Path(args.selection) if args.selection else None
        print(f"bundled {bundle(Path(args.source), args.name, dst, checkpoint, selection)}")
    if args.scores:
        print(json.dumps(record_scores(Path(args.scores), args.name, dst), indent=2)[:2000])


if __name__ == "__main__":
    main()
