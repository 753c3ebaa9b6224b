"""Distil the 4 x 256 Mistral-architecture student from all-MiniLM-L6-v2's vectors (tokenlearn-style) on
sentence-transformers' Trainer: issue 13's "one fair last try" for the small student.

1. Texts: the sentences, two- and three-sentence windows and whole texts of the shared training files
   (``$LGANNA_DATA/train``, already filtered against the evaluation sets), deduplicated; any unit equal to an
   evaluation text (the leakage check's list) is dropped; shuffled with the seed; the first ``n_texts``.
2. Targets: the teacher's vectors of those texts, computed once in resumable parts and cached (float16), reduced
   to the student's width by their principal directions (uncentred, so cosines stay close to the teacher's) and
   re-normalised. The student's last dimension is the initialisation's constant "ballast" (see
   :func:`build_student`), so it gets a zero target and the reduction keeps ``hidden_size - 1`` directions.
3. Student: a ``MistralModel`` whose untrained mean pooling equals WordLlama's static vectors, trained with
   sentence-transformers' ``MSELoss`` between unit vectors (2 - 2 cos: cosine distillation), mean pooling with
   ``include_prompt=False`` (instructions attended to, not averaged), checkpoints, resume and a time budget;
   the best checkpoint on STSBenchmark *dev* Spearman is exported for ``LGAnnaEncoder`` and ``SentenceTransformer``.

Run: ``python -m lganna_rag.training.distill training/configs/lganna-mini-distill.yaml``
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

from lganna_rag.data import data_dir, read_jsonl

from .data import SOURCES, _strings, evaluation_texts, normalise, write_json

logger = logging.getLogger(__name__)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass
class StudentConfig:
    """Shape of the student; ``hidden_size - 1`` must not exceed WordLlama's 256 dimensions."""

    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    intermediate_size: int = 768
    max_position_embeddings: int = 512


@dataclass
class DistillConfig:
    """A distillation run; loaded from YAML by :func:`load_distill_config` (unknown keys are errors)."""

    name: str = "lganna-mini"
    output_dir: str = "runs/lganna-mini"
    seed: int = 0
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: str = "minilm"
    teacher_precision: str | None = None  # e.g. int8-onnx: ~1.8x faster here, cosine 0.994 to fp32 (int8.md)
    n_texts: int = 1_000_000
    min_chars: int = 20
    max_length: int = 64  # tokens, teacher and student alike
    serve_max_length: int = 512
    steps: int = 10_000
    batch_size: int = 64
    lr: float = 3e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    eval_every: int = 500
    save_every: int = 500
    dev_sts_pairs: int = 500
    time_budget_minutes: float | None = None
    teacher_batch_size: int = 128
    part_size: int = 8192  # texts per cached part of the targets
    cache_dir: str = "runs/distill-cache"
    export_dir: str | None = None  # default: <output_dir>/final
    align_texts: int = 100_000  # texts for the least-squares map of WordLlama's rows into the targets' space (0: off)


def load_distill_config(path: str | Path, **overrides: Any) -> DistillConfig:
    """Read a YAML config (unknown keys are errors); ``overrides`` that are not None replace top-level values."""
    from .trainer import _build

    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(raw.get("student"), dict):
        raw["student"] = _build(StudentConfig, raw["student"])
    return _build(DistillConfig, raw)


def build_student(cfg: StudentConfig, seed: int = 0) -> torch.nn.Module:
    """A ``MistralModel`` whose untrained mean pooling embeds texts like WordLlama (mean of its token vectors).

    Token rows: WordLlama's first ``hidden_size - 1`` dimensions at unit RMS, plus a constant "ballast" dimension
    ``8 * sqrt(hidden)`` that dominates every RMSNorm's denominator (so the norms act as near-linear scalings) and
    has weight 0 in every norm; ``o_proj`` and ``down_proj`` start at zero, so the hidden states are the
    embeddings. ``<unk>``, ``<s>``, ``</s>`` hold the ballast only (a zero row would make RMSNorm divide by
    ``sqrt(eps)`` and the first update blow it up into a large random vector).
    """
    from safetensors.torch import load_file
    from transformers import MistralConfig, MistralModel

    from lganna_rag.static import WORDLLAMA_TABLE, wordllama_dir

    table = load_file(str(Path(wordllama_dir()) / WORDLLAMA_TABLE))["embedding.weight"].float()
    h = cfg.hidden_size
    if h - 1 > table.shape[1]:
        raise ValueError(f"hidden_size {h} exceeds the WordLlama table's {table.shape[1]} dimensions + 1")
    torch.manual_seed(seed)
    model = MistralModel(MistralConfig(
        vocab_size=table.shape[0], hidden_size=h, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        sliding_window=None, bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False))
    ballast = 8.0 * h**0.5
    with torch.no_grad():
        emb = table[:, : h - 1]
        emb = emb / emb.pow(2).sum(-1).mean().sqrt() * (h - 1) ** 0.5
        weight = torch.zeros(table.shape[0], h)
        weight[:, : h - 1] = emb
        weight[:, h - 1] = ballast
        weight[[0, 1, 2], : h - 1] = 0.0
        model.embed_tokens.weight.copy_(weight)
        norm_weight = torch.full((h,), 8.0)  # a token's RMS is ~ballast / sqrt(h) = 8: back to unit scale
        norm_weight[h - 1] = 0.0
        for layer in model.layers:
            layer.input_layernorm.weight.copy_(norm_weight)
            layer.post_attention_layernorm.weight.copy_(norm_weight)
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.norm.weight.copy_(norm_weight)
    return model


def align_table(student: torch.nn.Module, tokenizer: Any, texts: Sequence[str], targets: np.ndarray, *,
                max_length: int = 64, ridge: float = 1e-3) -> float:
    """Map the student's token rows into the targets' space, in place: the least-squares (ridge) linear map from
    the untrained student's pooled vectors (the mean of a text's token rows) to ``targets``, applied to every row
    and rescaled to unit RMS per dimension. Untrained, the student then embeds a text as WordLlama's mean vector
    mapped into the teacher's principal directions (pooling is linear in the rows; the ballast keeps the norms
    near-linear). Returns the mean cosine between mapped pooled vectors and targets on the last fifth of ``texts``
    (not used to fit)."""
    dim = targets.shape[1]
    table = student.embed_tokens.weight.data
    ids = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    lengths = torch.tensor([max(len(i), 1) for i in ids])
    flat = torch.tensor([t for i in ids for t in (i or [0])])
    offsets = torch.cumsum(lengths, 0) - lengths
    pooled = torch.nn.functional.embedding_bag(flat, table[:, :dim], offsets, mode="mean").double()
    y = torch.from_numpy(np.asarray(targets, dtype=np.float64))
    fit = int(len(texts) * 0.8)
    x = pooled[:fit]
    gram = x.T @ x + ridge * len(x) * torch.eye(dim, dtype=torch.float64)
    w = torch.linalg.solve(gram, x.T @ y[:fit])
    held = torch.nn.functional.cosine_similarity(pooled[fit:] @ w, y[fit:], dim=1).mean().item()
    mapped = table[:, :dim].double() @ w
    mapped *= (dim / mapped[3:].pow(2).sum(-1).mean()).sqrt()  # rows 0-2 (<unk>, <s>, </s>) hold no content
    mapped[:3] = 0.0
    table[:, :dim] = mapped.to(table.dtype)
    return held


def text_units(text: str, min_chars: int = 20) -> list[str]:
    """The distillation units of one training text: its sentences, its windows of two and three sentences
    (when it has more sentences than the window) and the whole text, each at least ``min_chars`` long."""
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]
    units = [s for s in sentences if len(s) >= min_chars]
    for width in (2, 3):
        if len(sentences) > width:
            units += [" ".join(sentences[i:i + width]) for i in range(len(sentences) - width + 1)]
    whole = " ".join(text.split())
    if len(whole) >= min_chars and whole not in units:
        units.append(whole)
    return units


def distillation_texts(n: int, seed: int = 0, root: Path | None = None, min_chars: int = 20) -> list[str]:
    """Up to ``n`` distinct units (see :func:`text_units`) of every shared training file, none equal to an
    evaluation text, in a seeded random order."""
    root = root or data_dir()
    banned = evaluation_texts(root)
    seen: dict[str, None] = {}
    for src in SOURCES:
        for row in read_jsonl(src.location(root)):
            for text in _strings(row):
                for unit in text_units(text, min_chars):
                    seen.setdefault(unit, None)
    units = [u for u in seen if normalise(u) not in banned]
    logger.info("%d distinct units from %d training files (%d equal to evaluation texts dropped)",
                len(units), len(SOURCES), len(seen) - len(units))
    random.Random(seed).shuffle(units)
    return units[:n]


def _fingerprint(texts: Sequence[str], *parts: Any) -> str:
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()[:16]


def teacher_targets(texts: Sequence[str], cfg: DistillConfig) -> tuple[np.ndarray, float]:
    """The teacher's unit vectors of ``texts`` (float16), computed in parts of ``part_size`` texts under
    ``cache_dir`` (a killed run keeps its finished parts; a rerun computes only the missing ones), and the seconds
    the teacher spent on them over all invocations."""
    from tqdm import tqdm

    from lganna_rag.encoder import LGAnnaEncoder

    folder = Path(cfg.cache_dir) / f"targets-{_fingerprint(texts, cfg.teacher, cfg.teacher_precision, cfg.max_length)}"
    folder.mkdir(parents=True, exist_ok=True)
    n_parts = (len(texts) + cfg.part_size - 1) // cfg.part_size
    missing = [i for i in range(n_parts) if not (folder / f"part-{i:05d}.npy").is_file()]
    clock = folder / "seconds.json"  # the teacher's compute time over all invocations (provenance)
    if missing:
        teacher = LGAnnaEncoder.from_pretrained(cfg.teacher, precision=cfg.teacher_precision, max_length=cfg.max_length)
        done = (n_parts - len(missing)) * cfg.part_size
        with tqdm(total=len(texts), initial=min(done, len(texts)), desc=f"teacher vectors ({cfg.teacher})",
                  unit="text", mininterval=10, file=sys.stderr) as bar:
            for i in missing:
                t0 = time.time()
                part = texts[i * cfg.part_size:(i + 1) * cfg.part_size]
                vectors = teacher.encode(part, batch_size=cfg.teacher_batch_size, show_progress_bar=False)
                tmp = folder / f"part-{i:05d}.tmp.npy"
                np.save(tmp, vectors.astype(np.float16))
                tmp.rename(folder / f"part-{i:05d}.npy")
                spent = (json.loads(clock.read_text())["seconds"] if clock.is_file() else 0.0) + time.time() - t0
                write_json(clock, {"seconds": round(spent, 1)})
                bar.update(len(part))
    seconds = json.loads(clock.read_text())["seconds"] if clock.is_file() else 0.0
    return np.concatenate([np.load(folder / f"part-{i:05d}.npy") for i in range(n_parts)]), seconds


def principal_directions(vectors: np.ndarray, dim: int, sample: int = 200_000, seed: int = 0) -> tuple[np.ndarray, float]:
    """The top ``dim`` uncentred principal directions of ``vectors`` (``(d, dim)``) and the share of the squared
    norm they keep, from a seeded sample of ``sample`` rows."""
    if not 1 <= dim <= vectors.shape[1]:
        raise ValueError(f"dim must be between 1 and {vectors.shape[1]}, got {dim}")
    rng = np.random.default_rng(seed)
    rows = vectors if len(vectors) <= sample else vectors[rng.choice(len(vectors), sample, replace=False)]
    _, s, vt = np.linalg.svd(rows.astype(np.float32), full_matrices=False)
    energy = float((s[:dim] ** 2).sum() / (s**2).sum())
    return vt[:dim].T.copy(), energy


def reduce_targets(vectors: np.ndarray, directions: np.ndarray, width: int) -> np.ndarray:
    """Project onto ``directions``, re-normalise, and pad with zeros to ``width`` (the ballast dimension)."""
    out = np.zeros((len(vectors), width), dtype=np.float32)
    for start in range(0, len(vectors), 65536):
        block = vectors[start:start + 65536].astype(np.float32) @ directions
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        out[start:start + len(block), : directions.shape[1]] = block
    return out


def distill(cfg: DistillConfig, resume: bool = True, max_steps: int | None = None, stop_after: int | None = None,
            root: Path | None = None) -> dict[str, Any]:
    """Run the distillation (resuming from ``output_dir``'s last checkpoint unless ``resume=False``) and export
    the best checkpoint; returns the run's summary (also recorded in the export's ``lganna.json``)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
    from sentence_transformers.sentence_transformer.losses import MSELoss
    from transformers.trainer_utils import get_last_checkpoint

    from lganna_rag.static import wordllama_tokenizer

    from .model import build_model, export
    from .trainer import _Stop, _Trainer, pick_device, sts_dev_pairs

    started = time.time()
    out = Path(cfg.output_dir)
    steps = max_steps or cfg.steps
    texts = distillation_texts(cfg.n_texts, cfg.seed, root, cfg.min_chars)
    if len(texts) < steps * cfg.batch_size:
        logger.warning("%d texts for %d steps x %d: some are seen more than once", len(texts), steps, cfg.batch_size)
    targets, teacher_seconds = teacher_targets(texts, cfg)
    width = cfg.student.hidden_size
    directions, energy = principal_directions(targets, width - 1, seed=cfg.seed)
    used = min(len(texts), steps * cfg.batch_size)
    labels = reduce_targets(targets[:used], directions, width)
    logger.info("targets: %d x %d -> %d dims (%.1f%% of the squared norm)", *targets.shape, width - 1, 100 * energy)

    init = out / "init"
    alignment = None
    if not (init / "model.safetensors").is_file():
        student, tokenizer = build_student(cfg.student, cfg.seed), wordllama_tokenizer(bos_eos=True)
        if cfg.align_texts:
            k = min(cfg.align_texts, used)
            alignment = align_table(student, tokenizer, texts[:k], labels[:k, : width - 1], max_length=cfg.max_length)
            logger.info("WordLlama rows mapped into the targets' space: held-out cosine %.4f", alignment)
        student.save_pretrained(init, safe_serialization=True)
        tokenizer.save_pretrained(init)
        write_json(init / "alignment.json", {"held_out_cosine": alignment, "texts": cfg.align_texts})
    alignment = json.loads((init / "alignment.json").read_text())["held_out_cosine"]
    device = pick_device(None)
    model = build_model(str(init), pooling="mean", include_prompt=False, max_length=cfg.max_length, device=device,
                        seed=cfg.seed)
    pairs = sts_dev_pairs(cfg.dev_sts_pairs, cfg.seed, root)
    evaluator = EmbeddingSimilarityEvaluator([p["sentence1"] for p in pairs], [p["sentence2"] for p in pairs],
                                             [float(p["score"]) for p in pairs], name="sts-dev")
    metric = "eval_sts-dev_spearman_cosine"
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, seed=cfg.seed, data_seed=cfg.seed,
        eval_strategy="steps", eval_steps=cfg.eval_every, save_strategy="steps", save_steps=cfg.save_every,
        save_total_limit=2, load_best_model_at_end=True, metric_for_best_model=metric, greater_is_better=True,
        logging_steps=50, report_to="none", use_cpu=device == "cpu", dataloader_drop_last=True,
        disable_tqdm=not sys.stderr.isatty())
    data = Dataset.from_dict({"text": texts[:used], "label": labels})
    stop = _Stop(cfg.time_budget_minutes, stop_after, out / "wall_time.json", started)
    trainer = _Trainer(model=model, args=args, train_dataset=data, loss=MSELoss(model), evaluator=evaluator,
                       callbacks=[stop])
    checkpoint = get_last_checkpoint(str(out)) if resume and out.is_dir() else None
    if checkpoint is None:
        write_json(out / "start_scores.json", evaluator(model))
    start_scores = json.loads((out / "start_scores.json").read_text())
    trainer.train(resume_from_checkpoint=checkpoint)
    end_scores = evaluator(trainer.model)
    wall = stop.wall()
    write_json(stop.wall_path, {"seconds": wall})
    summary = {
        "name": cfg.name, "kind": "distilled student", "student": dataclasses.asdict(cfg.student),
        "init": "WordLlama l2_supercat_256 table (ballast init: untrained mean pooling = WordLlama)"
                + (f", rows mapped into the targets' space by least squares on {cfg.align_texts} texts" if cfg.align_texts else ""),
        "alignment_held_out_cosine": alignment,
        "teacher": cfg.teacher, "teacher_precision": cfg.teacher_precision, "texts": len(texts),
        "texts_trained": trainer.state.global_step * cfg.batch_size, "target_dims": width - 1,
        "target_energy": round(energy, 4), "loss": "MSE between unit vectors (cosine distillation)",
        "pooling": "mean", "include_prompt": False, "steps": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "max_length": cfg.max_length, "dev_start": start_scores, "dev_end": end_scores,
        "teacher_seconds": teacher_seconds, "wall_time_s": round(wall, 1), "device": device,
    }
    export(trainer.model, Path(cfg.export_dir or out / "final"), base="", pooling="mean", include_prompt=False,
           append_eos=True, prompt_template=None, max_length=cfg.serve_max_length, provenance=summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    """``python -m lganna_rag.training.distill CONFIG [--max-steps N] [--stop-after N] [--no-resume]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lganna_rag.training.distill", description=main.__doc__)
    parser.add_argument("config")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--max-steps", type=int, default=None, help="replace the schedule's length")
    parser.add_argument("--stop-after", type=int, default=None, help="stop at this step with a checkpoint")
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--targets-only", action="store_true", help="compute and cache the teacher's vectors, then stop")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_distill_config(ns.config, output_dir=ns.output_dir)
    if ns.targets_only:
        targets, seconds = teacher_targets(distillation_texts(cfg.n_texts, cfg.seed, min_chars=cfg.min_chars), cfg)
        print(f"{len(targets)} teacher vectors cached under {cfg.cache_dir} ({seconds:.0f} s of teacher time)")
        return
    summary = distill(cfg, resume=not ns.no_resume, max_steps=ns.max_steps, stop_after=ns.stop_after)
    print(json.dumps({k: summary[k] for k in ("name", "steps", "texts", "dev_start", "dev_end", "wall_time_s")}, indent=2))


if __name__ == "__main__":
    main()
