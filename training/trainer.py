"""The LG-ANNA training loop, top to bottom: config -> data -> teacher labels -> mining -> loss -> steps.

    lganna-rag train training/configs/lganna-mini.yaml
    torchrun --nproc_per_node 2 -m lganna_rag.training.trainer CONFIG      # DDP (gloo on CPU)

Stage A (optional) distils the teacher's sentence embeddings through a learned projection.
Stage B is contrastive: each query (instruction + 0..K in-context examples, rendered by the same
``prompts.py`` as at inference) against its positive, ``k`` mined hard negatives and all in-batch
documents (InfoNCE), plus a KL term towards the teacher's soft labels over [positive + negatives].
All randomness is a function of (seed, step), so a resumed run repeats exactly what an
uninterrupted run would have done.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lganna_rag.encoder import LGAnnaEncoder
from lganna_rag.models import ModelConfig
from lganna_rag.prompts import PROMPT_VERSION, Task, render_query

from .data import SOURCES, Example, ExamplePool, check_leakage, icl_count, load_examples, source
from .losses import distill_loss, group_scores, info_nce, soft_label_kl, teacher_distribution
from .mining import mine_negatives
from .model import StudentConfig, build_student, llama2_tokenizer, save_student
from .teachers import TeacherConfig, build_teacher_labels

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class MiningConfig:
    """Hard-negative mining (see :mod:`lganna_rag.training.mining`)."""

    mode: str = "adaptive"
    perc: float = 0.95
    margin: float = 0.05
    threshold: float = 0.7
    k: int = 3


@dataclass
class LoraSettings:
    """LoRA via PEFT for large base models."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class TrainConfig:
    """Everything a run needs; loaded from YAML by :func:`load_config`."""

    name: str = "lganna-mini"
    output_dir: str = "runs/lganna-mini"
    seed: int = 0
    # model: a fresh WordLlama-initialised student, or a base checkpoint (+ LoRA)
    student: StudentConfig = field(default_factory=StudentConfig)
    base_model: str | None = None
    lora: LoraSettings | None = None
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    # data
    sources: list[str] = field(default_factory=lambda: [s.file for s in SOURCES])
    max_examples_per_source: int | None = 3000
    dev_examples_per_source: int = 20
    dev_sts_pairs: int = 500
    max_length: int = 128
    #: max_length written into the exported model's lganna.json (serving); ``None`` = ``max_length``
    serve_max_length: int | None = None
    # teacher and mining
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    soft_label_temperature: float = 0.05
    # loss = contrastive_weight * InfoNCE + kl_weight * soft-label KL + distill_weight * dense-teacher distillation
    contrastive_weight: float = 1.0
    distill_weight: float = 0.0
    distill_sim_weight: float = 10.0
    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-4
    #: learning rate of the token-embedding table; ``None`` = ``lr``, ``0`` = frozen (follows the same schedule)
    embedding_lr: float | None = None
    warmup_steps: int = 50
    weight_decay: float = 0.01
    temperature: float = 0.05
    kl_weight: float = 1.0
    icl_max_examples: int = 2
    icl_p_zero: float = 0.5
    use_instructions: bool = True
    # bookkeeping
    eval_every: int = 100
    save_every: int = 100
    time_budget_minutes: float | None = None
    cache_dir: str = "runs/teacher-cache"


def _build(cls: type, data: dict[str, Any] | None) -> Any:
    if data is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known: {sorted(names)}")
    return cls(**data)


def load_config(path: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """Read a YAML config (unknown keys are errors); ``overrides`` replace top-level values."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    nested = {"student": StudentConfig, "teacher": TeacherConfig, "mining": MiningConfig, "lora": LoraSettings}
    for key, cls in nested.items():
        if key in raw:
            raw[key] = _build(cls, raw[key])
    return _build(TrainConfig, raw)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def build_encoder(cfg: TrainConfig) -> LGAnnaEncoder:
    """The trainable encoder: a fresh student, or ``base_model`` (+ LoRA adapters via PEFT)."""
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
    if cfg.base_model is None:
        model = build_student(cfg.student, seed=cfg.seed)
        tokenizer = llama2_tokenizer()
        settings = ModelConfig(pooling=cfg.student.pooling, max_length=cfg.max_length,
                               prompt_template="e5" if cfg.use_instructions else None)
        encoder = LGAnnaEncoder(model, tokenizer, settings, name=cfg.name, is_decoder=True)
    else:
        base = LGAnnaEncoder.from_pretrained(cfg.base_model, dtype=dtype, device="cpu", max_length=cfg.max_length)
        encoder = base
    if cfg.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=cfg.lora.target_modules, bias="none")
        encoder.model = get_peft_model(encoder.model, lora)
    if cfg.gradient_checkpointing:
        encoder.model.gradient_checkpointing_enable()
    encoder.model.train()
    return encoder


# ---------------------------------------------------------------------------------------------
# Data preparation: examples, dev split, teacher labels, mined negatives
# ---------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """Training items with their mined negatives and soft labels, and a dev set."""

    examples: list[Example]
    tasks: dict[str, Task]
    symmetric: dict[str, bool]
    docs: list[str]
    positives: list[int]
    negatives: list[list[int]]
    teacher_probs: list[list[float]]
    teacher_queries: np.ndarray
    teacher_docs: np.ndarray
    pool: ExamplePool
    dev: list[Example]
    reranker: str
    mined_counts: dict[str, float]

    def group(self, i: int) -> list[int]:
        """Document indices of example ``i``'s candidate group: its positive, then its mined negatives."""
        return [self.positives[i], *self.negatives[i]]


def prepare(cfg: TrainConfig, root: Path | None = None) -> Prepared:
    """Leakage check, load and split examples, teacher labels, mining (cached teacher work)."""
    sources = [source(s) for s in cfg.sources]
    n_checked = check_leakage(sources, root)
    logger.info("leakage check passed on %d training rows", n_checked)
    rng = random.Random(cfg.seed)
    train: list[Example] = []
    dev: list[Example] = []
    for src in sources:
        rows = load_examples(src, root, seed=cfg.seed)
        rng.shuffle(rows)
        dev += rows[: cfg.dev_examples_per_source]
        rows = rows[cfg.dev_examples_per_source :]
        if cfg.max_examples_per_source:
            rows = rows[: cfg.max_examples_per_source]
        train += rows
    tasks = {src.file.removesuffix(".jsonl"): src.task for src in sources}
    symmetric = {src.file.removesuffix(".jsonl"): src.symmetric for src in sources}
    docs = list(dict.fromkeys([t for ex in train for t in (ex.positive, *ex.negatives)]))
    records, q_vec, d_vec, reranker = build_teacher_labels(train, docs, cfg.teacher, Path(cfg.cache_dir))
    doc_index = {d: i for i, d in enumerate(docs)}
    negatives, probs = [], []
    m = cfg.mining
    kept = []
    for i, (ex, rec) in enumerate(zip(train, records)):
        given = [doc_index[n] for n in ex.negatives if n in doc_index]
        score = dict(zip(rec.candidates, rec.scores))
        cands = list(dict.fromkeys(rec.candidates + given))
        scores = [score.get(c, min(rec.scores)) for c in cands]
        mined = mine_negatives([str(c) for c in cands], scores, {str(rec.positive)}, rec.positive_score, m.k,
                               mode=m.mode, perc=m.perc, margin=m.margin, threshold=m.threshold)
        chosen = [int(c) for c in mined]
        kept.append(len(chosen))
        filler = random.Random(cfg.seed * 1_000_003 + i)
        while len(chosen) < m.k:  # too few survivors: random documents of the whole pool (easy negatives)
            j = filler.randrange(len(docs))
            if j != rec.positive and j not in chosen:
                chosen.append(j)
        group = torch.tensor([rec.positive_score] + [score.get(c, min(rec.scores)) for c in chosen])
        negatives.append(chosen)
        probs.append(teacher_distribution(group[None], cfg.soft_label_temperature)[0].tolist())
    mined_counts = {"mean_mined_negatives": float(np.mean(kept)), "k": m.k}
    positives = [rec.positive for rec in records]
    return Prepared(train, tasks, symmetric, docs, positives, negatives, probs, q_vec, d_vec,
                    ExamplePool.from_examples(train), dev, reranker, mined_counts)


# ---------------------------------------------------------------------------------------------
# Evaluation on dev data (never test sets)
# ---------------------------------------------------------------------------------------------
def evaluate(encoder: LGAnnaEncoder, prep: Prepared, sts_dev: list[dict[str, Any]], use_instructions: bool = True,
             query_examples: int = 0) -> dict[str, float]:
    """STSBenchmark dev Spearman and retrieval MRR@10 of held-out training-source queries among all dev positives.

    ``query_examples`` > 0 gives every query of a task the same few-shot examples (the first pairs of
    that task's training pool), as a user would at inference time.
    """
    from scipy.stats import spearmanr

    was_training = encoder.model.training
    encoder.model.eval()
    def queries(texts: list[str], source: str) -> np.ndarray:
        task = prep.tasks.get(source)
        if not use_instructions or task is None:
            return encoder.encode(texts)
        shots = prep.pool.by_source.get(source, [])[:query_examples] if query_examples else None
        return encoder.encode_queries(texts, task=task, examples=shots)

    a = queries([r["sentence1"] for r in sts_dev], "stsb")
    b = queries([r["sentence2"] for r in sts_dev], "stsb")
    rho = float(spearmanr((a * b).sum(1), [r["score"] for r in sts_dev]).statistic)
    dev = [ex for ex in prep.dev if not prep.symmetric.get(ex.source, False)]
    docs = encoder.encode_documents([ex.positive for ex in dev])
    rr = []
    for src in sorted({ex.source for ex in dev}):
        idx = [i for i, ex in enumerate(dev) if ex.source == src]
        q = queries([dev[i].query for i in idx], src)
        ranks = (-(q @ docs.T)).argsort(axis=1)
        for row, i in enumerate(idx):
            pos = int(np.where(ranks[row] == i)[0][0])
            rr.append(1.0 / (pos + 1) if pos < 10 else 0.0)
    if was_training:
        encoder.model.train()
    mrr = float(np.mean(rr)) if rr else 0.0
    return {"sts_dev_spearman": round(100 * rho, 2), "retrieval_dev_mrr10": round(100 * mrr, 2),
            "dev_score": round(50 * rho + 50 * mrr, 2)}


def sts_dev_pairs(cfg: TrainConfig, root: Path | None = None) -> list[dict[str, Any]]:
    """A seeded random sample of ``dev_sts_pairs`` STSBenchmark dev pairs (the file is ordered by genre)."""
    from lganna_rag.data import data_dir, read_jsonl

    rows = list(read_jsonl((root or data_dir()) / "STSBenchmark" / "dev.jsonl"))
    return random.Random(cfg.seed).sample(rows, min(cfg.dev_sts_pairs, len(rows)))


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------
def batch_indices(n: int, batch_size: int, step: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """The example indices of global ``step`` for this rank: epoch-wise permutations seeded by (seed, epoch)."""
    per_epoch = n // batch_size
    epoch, offset = divmod(step, per_epoch)
    perm = np.random.default_rng(seed + 7919 * epoch).permutation(n)
    chunk = perm[offset * batch_size : (offset + 1) * batch_size].tolist()
    return chunk[rank::world]


def render_batch(cfg: TrainConfig, prep: Prepared, idx: Sequence[int], step: int,
                 encoder: LGAnnaEncoder) -> tuple[list[str], list[str], list[list[float]]]:
    """Query prompts (instruction + sampled ICL examples that fit), the docs (positive + negatives per query), teacher probs."""
    queries, docs, probs = [], [], []
    for i in idx:
        ex = prep.examples[i]
        rng = random.Random(hash((cfg.seed, step, i)) & 0xFFFFFFFF)
        task = prep.tasks[ex.source]
        if cfg.use_instructions:
            examples = prep.pool.sample(ex, icl_count(rng, cfg.icl_max_examples, cfg.icl_p_zero), rng)
            queries.append(encoder.fit_query(ex.query, task.with_examples(examples), cfg.max_length))
        else:
            queries.append(ex.query)
        group = [prep.docs[j] for j in prep.group(i)]
        if prep.symmetric.get(ex.source) and cfg.use_instructions:  # both sides get the instruction, no examples
            group = [render_query(d, Task(task.name, task.instruction), encoder.config.prompt_template or "e5") for d in group]
        docs += group
        probs.append(prep.teacher_probs[i])
    return queries, docs, probs


# ---------------------------------------------------------------------------------------------
# Checkpoints (safetensors for weights; optimizer state loaded with weights_only=True)
# ---------------------------------------------------------------------------------------------
def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.named_parameters() if v.requires_grad}


def save_checkpoint(path: Path, encoder: LGAnnaEncoder, optimizer: torch.optim.Optimizer, step: int, state: dict[str, Any]) -> None:
    """Write trainable weights (safetensors), optimizer state and the loop state; atomic by rename."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(_trainable(encoder.model), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)


def load_checkpoint(path: Path, encoder: LGAnnaEncoder, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns the loop state (with ``step``)."""
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    missing = encoder.model.load_state_dict(weights, strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"{path}: checkpoint has parameters this model lacks: {missing.unexpected_keys[:5]}")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return json.loads((path / "state.json").read_text())


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; with ``embedding_lr`` set, the embedding table gets its own group (0 freezes it)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    embedding = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else None
    if cfg.embedding_lr is None or embedding is None or not embedding.requires_grad:
        return torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rest = [p for p in trainable if p is not embedding]
    groups = [{"params": rest, "lr_scale": 1.0}]
    if cfg.embedding_lr == 0.0:
        embedding.requires_grad_(False)
    else:
        groups.append({"params": [embedding], "lr": cfg.embedding_lr, "lr_scale": cfg.embedding_lr / cfg.lr})
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, *, resume: bool = True, root: Path | None = None, max_steps: int | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Run (or resume) training; writes checkpoints, the best model and ``summary.json`` under ``output_dir``."""
    from tqdm.auto import tqdm

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if world > 1 and rank != 0:
        torch.distributed.barrier()  # rank 0 computes (and caches) the teacher labels first
    prep = prepare(cfg, root)
    if world > 1 and rank == 0:
        torch.distributed.barrier()
    encoder = build_encoder(cfg)
    sts_dev = sts_dev_pairs(cfg, root)
    model = encoder.model
    optimizer = build_optimizer(model, cfg)  # before DDP wraps the model: it may freeze the embedding table
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    state: dict[str, Any] = {"best": None, "history": []}
    step = 0
    ckpt = out / "checkpoint"
    if resume and ckpt.is_dir():
        state = load_checkpoint(ckpt, encoder, optimizer)
        step = state.pop("step")
        started -= state.pop("wall_seconds", 0.0)  # wall time (and the time budget) count the whole run
        logger.info("resumed from %s at step %d", ckpt, step)
    if rank == 0 and not state["history"]:
        state["history"].append({"step": 0, "loss": None, **evaluate(encoder, prep, sts_dev, cfg.use_instructions)})
    last = min(cfg.steps, max_steps) if max_steps is not None else cfg.steps
    bar = tqdm(total=last, initial=step, desc="training", disable=not progress or rank != 0)
    group = 1 + cfg.mining.k
    losses: list[float] = []
    # the forward pass goes through the DDP wrapper so gradients are averaged across ranks
    encoder.model = ddp_model
    def eval_and_export() -> None:
        encoder.model = model
        metrics = evaluate(encoder, prep, sts_dev, cfg.use_instructions)
        state["history"].append({"step": step, "loss": round(float(np.mean(losses[-cfg.eval_every:])), 4), **metrics})
        if state["best"] is None or metrics["dev_score"] > state["best"]["dev_score"]:
            state["best"] = {"step": step, **metrics}
            _export(encoder, cfg, prep, out / "best", state, started)
        encoder.model = ddp_model

    try:
        while step < last:
            over = bool(cfg.time_budget_minutes and (time.time() - started) / 60 > cfg.time_budget_minutes)
            if world > 1:  # every rank stops at the same step
                flag = torch.tensor([int(over)])
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                over = bool(flag.item())
            if over:
                logger.info("time budget reached at step %d", step)
                break
            for g in optimizer.param_groups:
                g["lr"] = _lr(step, cfg) * g.get("lr_scale", 1.0)
            idx = batch_indices(len(prep.examples), cfg.batch_size, step, cfg.seed, rank, world)
            queries, docs, probs = render_batch(cfg, prep, idx, step, encoder)
            q_ids, _ = encoder.tokenize(queries, cfg.max_length)
            d_ids, _ = encoder.tokenize(docs, cfg.max_length)
            q = encoder.embed(encoder.collate(q_ids))
            d = encoder.embed(encoder.collate(d_ids))
            loss = cfg.contrastive_weight * info_nce(q, d, group, cfg.temperature)
            if cfg.distill_weight:
                rows = [j for i in idx for j in prep.group(i)]
                loss = loss + cfg.distill_weight * distill_loss(
                    q, d, torch.from_numpy(prep.teacher_queries[idx]).float(),
                    torch.from_numpy(prep.teacher_docs[rows]).float(), cfg.temperature, cfg.distill_sim_weight)
            if cfg.kl_weight:
                loss = loss + cfg.kl_weight * soft_label_kl(group_scores(q, d, group), torch.tensor(probs), cfg.temperature)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            if rank == 0 and (step % cfg.eval_every == 0 or step == last):
                eval_and_export()
            if rank == 0 and (step % cfg.save_every == 0 or step == last):
                save_checkpoint(ckpt, encoder, optimizer, step, {**state, "wall_seconds": time.time() - started})
            if world > 1:
                torch.distributed.barrier()
        if rank == 0 and losses and state["history"][-1]["step"] != step:  # stopped by the time budget
            eval_and_export()
            save_checkpoint(ckpt, encoder, optimizer, step, {**state, "wall_seconds": time.time() - started})
    finally:
        encoder.model = model
        bar.close()
    summary = {"name": cfg.name, "steps": step, "wall_minutes": round((time.time() - started) / 60, 1),
               "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None,
               "losses": [round(x, 4) for x in losses], **state}
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _export(encoder: LGAnnaEncoder, cfg: TrainConfig, prep: Prepared, path: Path, state: dict[str, Any], started: float) -> None:
    """Save a servable model directory with provenance in ``lganna.json``."""
    provenance = {
        "recipe": "LG-ANNA: teacher soft labels (KL) + adaptive-margin mined negatives + "
                  + ("instruction + ICL prompts" if cfg.use_instructions else "plain queries (no instructions, no ICL)")
                  + " + InfoNCE" + (" + relational distillation of the dense teacher" if cfg.distill_weight else ""),
        "loss_weights": {"contrastive": cfg.contrastive_weight, "kl": cfg.kl_weight, "distill": cfg.distill_weight,
                         "distill_sim": cfg.distill_sim_weight},
        "instructions": cfg.use_instructions,
        "teacher": {"stage1": ["bm25s", cfg.teacher.dense], "stage2": prep.reranker,
                    "soft_label_temperature": cfg.soft_label_temperature},
        "mining": dataclasses.asdict(cfg.mining), **prep.mined_counts,
        "data": {"sources": cfg.sources, "examples": len(prep.examples)},
        "student": dataclasses.asdict(cfg.student) if cfg.base_model is None else None,
        "base_model": cfg.base_model, "best": state.get("best"),
        "optimizer": {"lr": cfg.lr, "embedding_lr": cfg.embedding_lr, "weight_decay": cfg.weight_decay,
                      "warmup_steps": cfg.warmup_steps, "steps": cfg.steps, "batch_size": cfg.batch_size,
                      "max_length": cfg.max_length, "temperature": cfg.temperature},
        "wall_minutes": round((time.time() - started) / 60, 1), "prompt_version": PROMPT_VERSION,
    }
    if cfg.base_model is None:
        save_student(encoder.model, encoder.tokenizer, path, cfg.student.pooling, cfg.serve_max_length or cfg.max_length,
                     provenance, prompt_template=encoder.config.prompt_template)
    else:
        encoder.config.provenance = provenance
        encoder.save_pretrained(path)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lganna_rag.training.trainer CONFIG`` (also under torchrun)."""
    import argparse

    parser = argparse.ArgumentParser(description="Train an LG-ANNA embedder")
    parser.add_argument("config")
    parser.add_argument("--output-dir")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--no-resume", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_config(args.config, output_dir=args.output_dir)
    summary = train(cfg, resume=not args.no_resume, max_steps=args.max_steps)
    print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=2))


if __name__ == "__main__":
    main()
