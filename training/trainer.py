"""The LG-ANNA recipe on sentence-transformers' Trainer: config -> data -> teacher labels -> mining -> Trainer.

Run by ``lganna-rag train CONFIG``, or for DDP ``torchrun``/``accelerate launch -m lganna_rag.training.cli CONFIG``.
The Trainer owns devices, precision, DDP, the optimiser, checkpoints and resume; this module holds the recipe
(texts, prompts, negatives, soft labels). Mean-pooled models get the instruction as a sentence-transformers
prompt with ``Pooling(include_prompt=False)``: attended to, not averaged, at training and inference alike.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from datasets import Dataset, DatasetDict
from peft import set_peft_model_state_dict
from safetensors.torch import load_file
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator
from sentence_transformers.sentence_transformer.training_args import BatchSamplers, MultiDatasetBatchSamplers
from transformers import AutoConfig, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from lganna_rag.data import data_dir, read_jsonl
from lganna_rag.encoder import _is_decoder
from lganna_rag.metrics import answer_ranks, mrr_of_ranks
from lganna_rag.models import REGISTRY
from lganna_rag.prompts import Task, render_query, uses_instruction, with_model_instruction

from .data import SOURCES, Example, ExamplePool, Source, check_leakage, icl_count, load_examples, source, write_json
from .losses import LGAnnaLoss
from .model import LoraSettings, base_directory, build_model, export, task_prefix
from .teachers import TeacherConfig, build_teacher_labels, mine_negatives

logger = logging.getLogger(__name__)


@dataclass
class MiningConfig:
    """Hard-negative mining on the teacher's scores (see :mod:`lganna_rag.training.teachers`)."""

    mode: str = "adaptive"
    perc: float = 0.95
    margin: float = 0.05
    threshold: float = 0.7
    k: int = 3


@dataclass
class TrainConfig:
    """Everything a run needs; loaded from YAML by :func:`load_config` (unknown keys are errors)."""

    name: str = "lganna-minilm"
    output_dir: str = "runs/lganna-minilm"
    seed: int = 0
    # model
    base_model: str = "minilm"  # registered name, directory, hub id or "smollm2"
    lora: LoraSettings | None = None
    pooling: str | None = None  # None: "last" for decoders (EOS appended), "mean" for encoders
    include_prompt: bool = False  # mean pooling: average the instruction tokens too (False: attend, don't average)
    use_instructions: bool = True
    prompt_template: str = "e5"  # the query template (lganna_rag.prompts.TEMPLATES); e.g. "prefix" for bge models
    task_instructions: dict[str, str] | None = None  # task type -> one instruction replacing the tasks' own (bge)
    instruction_task_types: list[str] | None = None  # None: every task; e.g. [retrieval, reranking]: others plain
    icl_max_examples: int = 0
    icl_p_zero: float = 0.5
    dtype: str = "float32"
    device: str | None = None  # None: CUDA when present (the launcher sets the rank's device), else CPU
    gradient_checkpointing: bool = False
    # data: shared source names, or {"path": ..., "task": ..., "instruction": ...} for the user's own JSONL
    sources: list[Any] = field(default_factory=lambda: [s.file for s in SOURCES])
    max_examples_per_source: int | None = 3000
    dev_examples_per_source: int = 20
    dev_sts_pairs: int = 500
    leakage_check: bool = True
    max_length: int = 128
    serve_max_length: int | None = None
    # teacher, mining, loss
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    soft_label_temperature: float = 0.05
    temperature: float = 0.05
    contrastive_weight: float = 1.0
    kl_weight: float = 1.0
    # self-distillation: weight x mean(1 - cos(student, base model)) over every text of a batch, the base's vectors
    # computed once before training (keeps the base's geometry for what the recipe does not train)
    self_distill_weight: float = 0.0
    mini_batch_size: int | None = None  # GradCache mini-batches (large batches in little memory)
    gather_across_devices: bool = False  # other ranks' documents as extra negatives
    # optimisation (Trainer arguments)
    steps: int = 500
    batch_size: int = 32
    gradient_accumulation_steps: int = 1
    lr: float = 2e-5
    warmup_steps: int = 50
    weight_decay: float = 0.01
    eval_every: int = 100
    save_every: int = 100
    keep_checkpoints: int | None = 2  # checkpoints kept on disk (the best and the last); None keeps every one
    time_budget_minutes: float | None = None
    cache_dir: str = "runs/cache"
    export_dir: str | None = None  # default: <output_dir>/final

    def __post_init__(self) -> None:
        if self.pooling not in (None, "last", "mean", "cls"):
            raise ValueError(f"pooling must be last, mean, cls or null, got {self.pooling!r}")


def _build(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known: {sorted(names)}")
    return cls(**data)


def load_config(path: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """Read a YAML config (unknown keys are errors); ``overrides`` replace top-level values."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    for key, cls in {"teacher": TeacherConfig, "mining": MiningConfig, "lora": LoraSettings}.items():
        if isinstance(raw.get(key), dict):
            raw[key] = _build(cls, raw[key])
    return _build(TrainConfig, raw)


@dataclass
class Prepared:
    """Rows per source (anchor, positive, negative_1..k, label = teacher scores), prompts, dev data."""

    datasets: dict[str, dict[str, list[Any]]]
    prompts: dict[str, dict[str, str]]
    tasks: dict[str, Task]
    symmetric: dict[str, bool]
    dev: list[Example]
    reranker: str
    stats: dict[str, Any]


@dataclass
class Style:
    """How texts are rendered for one model: prompts as sentence-transformers prompts or inline, EOS text."""

    template: str | None  # prompt template (None: no instructions)
    prompt_as_prefix: bool  # mean pooling without prompt tokens: ST prompts (prompt_length is tracked)
    eos_text: str  # appended to every text for last-token models whose tokenizer adds no EOS
    task_types: list[str] | None = None  # task types that get instructions (None: all)
    task_instructions: dict[str, str] | None = None  # task type -> the model's one instruction for it

    def prompted(self, task: Task | None) -> bool:
        """Whether ``task``'s texts carry an instruction at all."""
        return task is not None and self.template is not None and uses_instruction(task, self.task_types)

    def query(self, text: str, task: Task | None) -> str:
        """A text as the model reads it: plain (``task`` None, or the prompt is a ST prefix) or with its prompt."""
        if not self.prompted(task) or self.prompt_as_prefix:
            return text + self.eos_text
        return render_query(text, with_model_instruction(task, self.task_instructions), self.template) + self.eos_text

    def prefix(self, task: Task) -> str:
        """The sentence-transformers prompt for ``task`` (instruction only; examples are inline)."""
        return task_prefix(with_model_instruction(task, self.task_instructions), self.template or "e5") or ""


def split_rows(cfg: TrainConfig, sources: list[Source], rng: random.Random,
               root: Path | None = None) -> list[tuple[list[Example], list[Example], list[Example]]]:
    """Per source, in order: its (dev, train, unused) rows. Each source's rows are shuffled by ``rng`` in turn, the
    first ``dev_examples_per_source`` are dev, the next ``max_examples_per_source`` train; the rest are never trained
    on (held-out data for :mod:`lganna_rag.training.select`). A list, so sources sharing a name all keep their rows."""
    out = []
    for src in sources:
        rows = load_examples(src, root, seed=cfg.seed)
        rng.shuffle(rows)
        n_dev = cfg.dev_examples_per_source
        cut = n_dev + cfg.max_examples_per_source if cfg.max_examples_per_source else len(rows)
        out.append((rows[:n_dev], rows[n_dev:cut], rows[cut:]))
    return out


def prepare(cfg: TrainConfig, style: Style, root: Path | None = None) -> Prepared:
    """Leakage check, examples, dev split, teacher labels (cached) and mined negatives with their scores."""
    sources = [source(s) for s in cfg.sources]
    root = root or data_dir(must_exist=False)
    if cfg.leakage_check and root.is_dir():
        logger.info("leakage check passed on %d training rows", check_leakage(sources, root))
    elif cfg.leakage_check:
        logger.warning("no evaluation sets at %s: the leakage check is skipped (set LGANNA_DATA)", root)
    rng = random.Random(cfg.seed)
    train: list[Example] = []
    dev: list[Example] = []
    for src_dev, src_train, _ in split_rows(cfg, sources, rng, root):
        dev += src_dev
        train += src_train
    if not train:
        raise ValueError("no training rows: check the configured sources")
    tasks = {src.name: src.task for src in sources}
    symmetric = {src.name: src.symmetric for src in sources}
    docs = list(dict.fromkeys(t for ex in train for t in (ex.positive, *ex.negatives)))
    records, reranker = build_teacher_labels(train, docs, cfg.teacher, Path(cfg.cache_dir))
    doc_index = {d: i for i, d in enumerate(docs)}
    pool = ExamplePool.from_examples(train)
    m = cfg.mining
    cols = ["anchor", "positive", *[f"negative_{j + 1}" for j in range(m.k)], "label"]
    datasets: dict[str, dict[str, list[Any]]] = {}
    kept = []
    for i, (ex, rec) in enumerate(zip(train, records)):
        score = dict(zip(rec.candidates, rec.scores))
        floor = min(rec.scores)
        cands = list(dict.fromkeys(rec.candidates + [doc_index[n] for n in ex.negatives]))
        chosen = mine_negatives(cands, [score.get(c, floor) for c in cands], {rec.positive}, rec.positive_score, m.k,
                                mode=m.mode, perc=m.perc, margin=m.margin, threshold=m.threshold)
        kept.append(len(chosen))
        filler = random.Random(cfg.seed * 1_000_003 + i)
        while len(chosen) < m.k:  # too few survivors: random documents of the pool (easy negatives, lowest score)
            j = filler.randrange(len(docs))
            if j != rec.positive and j not in chosen:
                chosen.append(j)
        task = tasks[ex.source]
        shots = pool.sample(ex, icl_count(rng, cfg.icl_max_examples, cfg.icl_p_zero), rng) if cfg.use_instructions else []
        doc_task = task if symmetric[ex.source] else None  # symmetric tasks: documents get the instruction too
        row = [style.query(ex.query, task.with_examples(shots)),
               *[style.query(docs[j], doc_task) for j in [rec.positive, *chosen]],
               [rec.positive_score, *[score.get(c, floor) for c in chosen]]]
        table = datasets.setdefault(ex.source, {c: [] for c in cols})
        for c, v in zip(cols, row):
            table[c].append(v)
    prompts = {name: {c: style.prefix(task) for c in (cols[:-1] if symmetric[name] else ["anchor"])}
               for name, task in tasks.items() if style.prompt_as_prefix and style.prompted(task)}
    stats = {"train_rows": len(train), "dev_rows": len(dev), "documents": len(docs),
             "mean_mined_negatives": round(float(np.mean(kept)), 3), "k": m.k,
             "rows_per_source": {k: len(v["anchor"]) for k, v in datasets.items()}}
    return Prepared(datasets, prompts, tasks, symmetric, dev, reranker, stats)


def add_base_vectors(prep: Prepared, model: Any, cache_dir: Path, base: str) -> None:
    """Append the untrained model's vector of every text of a row to its ``label`` (after the teacher scores), for
    the self-distillation term. ``model`` must still be the base (a fresh LoRA adapter changes nothing). Cached on
    disk by a fingerprint of the base and the texts."""
    import hashlib

    columns = [c for c in next(iter(prep.datasets.values())) if c != "label"]
    h = hashlib.sha256(f"{base}|{model.get_sentence_embedding_dimension()}".encode())
    for name, table in prep.datasets.items():
        for c in columns:
            h.update(f"{name}|{c}|{prep.prompts.get(name, {}).get(c, '')}|".encode())
            h.update("\x00".join(table[c]).encode())
    path = cache_dir / f"base-vectors-{h.hexdigest()[:16]}.npy"
    if path.is_file():
        vectors = np.load(path, allow_pickle=False)
    else:
        parts = []
        for name, table in prep.datasets.items():
            for c in columns:
                prompt = prep.prompts.get(name, {}).get(c) or None
                logger.info("self-distillation: base vectors of %s/%s (%d texts)", name, c, len(table[c]))
                parts.append(model.encode(table[c], prompt=prompt, batch_size=64, convert_to_numpy=True,
                                          show_progress_bar=sys.stderr.isatty()).astype(np.float32))
        vectors = np.concatenate(parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path.with_suffix(".tmp.npy"), vectors, allow_pickle=False)
        path.with_suffix(".tmp.npy").replace(path)
    start = 0
    for name, table in prep.datasets.items():
        n = len(table["label"])
        per_column = [vectors[start + j * n: start + (j + 1) * n] for j in range(len(columns))]
        start += n * len(columns)
        table["label"] = [list(table["label"][i]) + np.concatenate([v[i] for v in per_column]).tolist()
                          for i in range(n)]


class DevEvaluator(SentenceEvaluator):
    """A sentence-transformers evaluator: ``dev_score`` = mean of STSB dev Spearman and retrieval dev MRR@10."""

    def __init__(self, prep: Prepared, style: Style, sts_pairs: list[dict[str, Any]], name: str = "dev") -> None:
        """``sts_pairs`` are STSBenchmark dev rows; retrieval uses the held-out examples of asymmetric sources."""
        super().__init__()
        self.prep, self.style, self.sts, self.name = prep, style, sts_pairs, name
        self.primary_metric = f"{name}_dev_score"

    def encode(self, model: Any, texts: list[str], source: str | None, query: bool) -> np.ndarray:
        """Embed as at inference: queries with their task prompt, documents plain (symmetric: both prompted)."""
        task = self.prep.tasks.get(source or "") if query or self.prep.symmetric.get(source or "") else None
        if self.style.prompted(task) and self.style.prompt_as_prefix:
            return model.encode(texts, prompt=self.style.prefix(task), convert_to_numpy=True, show_progress_bar=False)
        return model.encode([self.style.query(t, task) for t in texts], convert_to_numpy=True, show_progress_bar=False)

    def __call__(self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        """Metrics, keys prefixed with the evaluator's name (the Trainer adds ``eval_``)."""
        out: dict[str, float] = {}
        parts = []
        if self.sts:
            a = self.encode(model, [r["sentence1"] for r in self.sts], "stsb", True)  # stsb's prompt, if trained on it
            b = self.encode(model, [r["sentence2"] for r in self.sts], "stsb", True)
            rho = 100 * float(spearmanr((a * b).sum(1), [float(r["score"]) for r in self.sts]).statistic)
            out["sts_dev_spearman"] = round(rho, 2)
            parts.append(rho)
        dev = [ex for ex in self.prep.dev if not self.prep.symmetric.get(ex.source, False)]
        if dev:
            docs = self.encode(model, [ex.positive for ex in dev], None, False)
            ranks: list[int] = []
            for src in sorted({ex.source for ex in dev}):
                idx = [i for i, ex in enumerate(dev) if ex.source == src]
                q = self.encode(model, [dev[i].query for i in idx], src, True)
                ranks += answer_ranks(q @ docs.T, idx, ties="argsort").tolist()
            out["retrieval_dev_mrr10"] = round(100 * mrr_of_ranks(ranks, 10), 2)
            parts.append(out["retrieval_dev_mrr10"])
        out["dev_score"] = round(float(np.mean(parts)), 2) if parts else 0.0
        return {f"{self.name}_{k}": v for k, v in out.items()}


def sts_dev_pairs(n: int, seed: int, root: Path | None = None) -> list[dict[str, Any]]:
    """A seeded random sample of ``n`` STSBenchmark dev pairs (the file is ordered by genre); [] if absent."""
    path = (root or data_dir(must_exist=False)) / "STSBenchmark" / "dev.jsonl"
    if n <= 0 or not path.is_file():
        return []
    rows = list(read_jsonl(path))
    return random.Random(seed).sample(rows, min(n, len(rows)))


@dataclass
class TrainResult:
    """What a run produced: the export directory, a summary (also in lganna.json) and the trained model."""

    export_dir: Path | None
    summary: dict[str, Any]
    model: Any


class _Stop(TrainerCallback):
    """Stops with an evaluation and a checkpoint (the schedule keeps its length) after ``minutes`` of this
    invocation or at global step ``stop_after``, so a long run can be split and resumed. At every checkpoint it
    records the run's wall time across resumes (``wall_time.json``), so a killed run keeps what it spent."""

    def __init__(self, minutes: float | None, stop_after: int | None, wall_path: Path, started: float) -> None:
        self.minutes, self.stop_after, self.start = minutes, stop_after, time.monotonic()
        self.wall_path, self.started = wall_path, started
        self.prior = json.loads(wall_path.read_text())["seconds"] if wall_path.is_file() else 0.0

    def wall(self) -> float:
        """Seconds spent on the run so far, earlier invocations included."""
        return self.prior + time.time() - self.started

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Record the wall time with each checkpoint (rank 0)."""
        if state.is_world_process_zero:
            write_json(self.wall_path, {"seconds": self.wall()})
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Ask the Trainer to stop when the time or the step is reached."""
        late = self.minutes is not None and time.monotonic() - self.start > self.minutes * 60
        if late or (self.stop_after is not None and state.global_step >= self.stop_after):
            logger.warning("stopping at step %d (%s)", state.global_step, "time budget" if late else "--stop-after")
            control.should_training_stop = control.should_save = control.should_evaluate = True
        return control


class _Trainer(SentenceTransformerTrainer):
    """The library's Trainer; a LoRA model's checkpoints hold the adapter only, so resuming and loading the best
    checkpoint put the adapter's weights into the PEFT model (the library's reload rebuilds a whole model)."""

    def _load_from_checkpoint(self, checkpoint_path: str, model: Any = None) -> None:
        peft_model = self.model[0].model
        adapter = Path(checkpoint_path) / "adapter_model.safetensors"
        if not getattr(peft_model, "peft_config", None) or not adapter.is_file():
            return super()._load_from_checkpoint(checkpoint_path)
        result = set_peft_model_state_dict(peft_model, load_file(str(adapter)))
        if result.unexpected_keys:
            raise RuntimeError(f"{adapter}: unexpected adapter keys {result.unexpected_keys[:3]}")


def pick_device(configured: str | None) -> str:
    """The configured device, else CUDA when present, else CPU (under torchrun/accelerate the launcher sets each
    rank's CUDA device and picks the process-group backend)."""
    return configured or ("cuda" if torch.cuda.is_available() else "cpu")


def train(cfg: TrainConfig, resume: bool = True, max_steps: int | None = None, root: Path | None = None,
          callbacks: list[Any] | None = None, stop_after: int | None = None) -> TrainResult:
    """Run the recipe, resuming from ``output_dir``'s last checkpoint unless ``resume=False``. ``max_steps`` replaces
    the schedule's length; ``stop_after`` stops at that step with a checkpoint and export (rerun to continue)."""
    started = time.time()
    base_dir = base_directory(cfg.base_model, Path(cfg.cache_dir))
    decoder = _is_decoder(AutoConfig.from_pretrained(base_dir))  # causal LM: last-token pooling, EOS appended
    pooling = cfg.pooling or ("last" if decoder else "mean")
    if cfg.icl_max_examples and pooling == "mean" and not cfg.include_prompt:
        raise ValueError("in-context examples need pooling: last (or include_prompt: true): mean pooling without "
                         "prompt tokens takes one prompt per batch, and examples differ per query")
    device = pick_device(cfg.device)
    model = build_model(base_dir, pooling=pooling, include_prompt=cfg.include_prompt, max_length=cfg.max_length,
                        dtype=cfg.dtype, lora=cfg.lora, device=device, seed=cfg.seed)
    tok = model[0].tokenizer
    eos_text = tok.eos_token if decoder and tok.eos_token and tok("a")["input_ids"][-1] != tok.eos_token_id else ""
    template = cfg.prompt_template if cfg.use_instructions else None
    style = Style(template, pooling == "mean" and not cfg.include_prompt, eos_text, cfg.instruction_task_types,
                  cfg.task_instructions)
    prep = prepare(cfg, style, root)
    if cfg.self_distill_weight:
        add_base_vectors(prep, model, Path(cfg.cache_dir), cfg.base_model)
    evaluator = DevEvaluator(prep, style, sts_dev_pairs(cfg.dev_sts_pairs, cfg.seed, root))
    loss = LGAnnaLoss(model, temperature=cfg.temperature, contrastive_weight=cfg.contrastive_weight,
                      kl_weight=cfg.kl_weight, soft_label_temperature=cfg.soft_label_temperature,
                      self_distill_weight=cfg.self_distill_weight, mini_batch_size=cfg.mini_batch_size, gather_across_devices=cfg.gather_across_devices)
    out = Path(cfg.output_dir)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), max_steps=max_steps or cfg.steps, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, seed=cfg.seed, data_seed=cfg.seed,
        eval_strategy="steps", eval_steps=cfg.eval_every, save_strategy="steps", save_steps=cfg.save_every,
        save_total_limit=cfg.keep_checkpoints, load_best_model_at_end=True, metric_for_best_model=f"eval_{evaluator.primary_metric}",
        greater_is_better=True, logging_steps=max(1, min(10, cfg.eval_every)), report_to="none",
        use_cpu=device == "cpu", bf16=cfg.dtype == "bfloat16" and device != "cpu",
        gradient_checkpointing=cfg.gradient_checkpointing, prompts=prep.prompts or None,
        batch_sampler=BatchSamplers.NO_DUPLICATES, multi_dataset_batch_sampler=MultiDatasetBatchSamplers.PROPORTIONAL,
        dataloader_drop_last=True, disable_tqdm=not sys.stderr.isatty(),
    )
    train_data = DatasetDict({name: Dataset.from_dict(cols) for name, cols in prep.datasets.items()})
    stop = _Stop(cfg.time_budget_minutes, stop_after, out / "wall_time.json", started)
    trainer = _Trainer(model=model, args=args, train_dataset=train_data, loss=loss, evaluator=evaluator,
                       callbacks=[*(callbacks or []), stop])
    rank0 = trainer.is_world_process_zero()
    checkpoint = get_last_checkpoint(str(out)) if resume and out.is_dir() else None
    start_scores = None if checkpoint else evaluator(model)
    if start_scores:
        logger.info("dev before training: %s", start_scores)
        if rank0:
            write_json(out / "start_scores.json", start_scores)
    elif (out / "start_scores.json").is_file():
        start_scores = json.loads((out / "start_scores.json").read_text())
    trainer.train(resume_from_checkpoint=checkpoint)
    end_scores = evaluator(trainer.model)
    logger.info("dev after training (best checkpoint): %s", end_scores)
    wall = stop.wall()  # the run's total across resumes (rank 0 writes it)
    if rank0:
        write_json(stop.wall_path, {"seconds": wall})
    summary = {
        "name": cfg.name, "base_model": cfg.base_model, "pooling": pooling, "include_prompt": cfg.include_prompt,
        "prompt_template": template, "instruction_task_types": cfg.instruction_task_types,
        "task_instructions": cfg.task_instructions,
        "lora": dataclasses.asdict(cfg.lora) if cfg.lora else None, "steps": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "max_length": cfg.max_length, "teacher": {**dataclasses.asdict(cfg.teacher), "reranker": prep.reranker},
        "mining": dataclasses.asdict(cfg.mining), "loss": loss.get_config_dict(),
        "icl_max_examples": cfg.icl_max_examples, "sources": [source(s).name for s in cfg.sources],
        "tasks": sorted({t.name for t in prep.tasks.values()}), "data": prep.stats, "dev_start": start_scores,
        "dev_end": end_scores, "wall_time_s": round(wall, 1), "device": device, "world_size": trainer.args.world_size,
    }
    export_dir = None
    if rank0:
        base_ref = cfg.base_model if cfg.base_model in REGISTRY else base_dir  # smollm2: the converted folder
        export_dir = export(trainer.model, Path(cfg.export_dir or out / "final"), base=base_ref, pooling=pooling,
                            include_prompt=cfg.include_prompt, append_eos=decoder, prompt_template=template,
                            instruction_task_types=cfg.instruction_task_types, task_instructions=cfg.task_instructions,
                            max_length=cfg.serve_max_length or cfg.max_length, provenance=summary)
        logger.info("exported to %s", export_dir)
    return TrainResult(export_dir, summary, trainer.model)
