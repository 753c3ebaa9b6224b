"""Choose among trained models without reading a test split, and make weight-space variants to choose from.

``score``: held-out retrieval on the training sources (queries never trained on, searched in one pooled corpus of
their answers and of distractor passages from the same sources), held-out clustering (texts of the labelled sources'
untrained rows, clustered by label), plus ``bench quality --dev`` (the dev/validation splits of WikiQA,
STSBenchmark, AmazonCounterfactual, SST2 and Clinc150). The selection score is the mean of the five task-type means
(retrieval, clustering, reranking, STS, classification). ``soup``: a LoRA adapter equal to a weighted sum
of adapters' weight deltas (ranks concatenated, so the sum is exact), e.g. ``0.5 x`` one adapter (halfway to the
base model, as WiSE-FT interpolates) or the mean of two runs' adapters.

    python -m lganna_rag.training.select soup runs/variants/half --template lganna_rag/weights/lganna-minilm \\
        lganna_rag/weights/lganna-minilm:0.5
    python -m lganna_rag.training.select score training/configs/lganna-minilm-1k.yaml minilm \\
        lganna_rag/weights/lganna-minilm runs/variants/half --out runs/select
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

import click
import numpy as np
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from lganna_rag.metrics import answer_ranks, ndcg_of_ranks
from lganna_rag.prompts import Task

from .data import source, write_json
from .trainer import TrainConfig, load_config, split_rows


@dataclass
class HeldOut:
    """Held-out retrieval: one pooled corpus; per source, its task and (query, index of the answer) pairs."""

    corpus: list[str]
    queries: dict[str, tuple[Task, list[tuple[str, int]]]]
    sizes: dict[str, Any]


def heldout_retrieval(cfg: TrainConfig, n_queries: int = 100, n_distractors: int = 1000,
                      root: Path | None = None) -> HeldOut:
    """Queries of ``cfg``'s asymmetric sources that ``cfg`` never trains on: its dev rows, then unused rows, up to
    ``n_queries`` per source; the corpus holds their answers and the answers of up to ``n_distractors`` further
    unused rows per source. A config with more training rows per source (same seed and sources) holds out a subset
    of what a smaller one does, so score runs of different sizes with the largest run's config."""
    sources = [source(s) for s in cfg.sources]
    splits = split_rows(cfg, sources, random.Random(cfg.seed), root)
    corpus: dict[str, int] = {}
    queries: dict[str, tuple[Task, list[tuple[str, int]]]] = {}
    sizes: dict[str, Any] = {}
    for src, (dev, _, unused) in zip(sources, splits):
        if src.symmetric:
            continue
        asked = (dev + unused)[:n_queries]
        distractors = unused[max(0, n_queries - len(dev)):][:n_distractors]
        pairs = []
        for ex in asked:
            pairs.append((ex.query, corpus.setdefault(ex.positive, len(corpus))))
        for ex in distractors:
            corpus.setdefault(ex.positive, len(corpus))
        queries[src.name] = (src.task, pairs)
        sizes[src.name] = {"queries": len(pairs), "distractors": len(distractors)}
    if not queries:
        raise ValueError("held-out retrieval needs at least one asymmetric (query -> passage) source in the config")
    sizes["corpus"] = len(corpus)
    return HeldOut(list(corpus), queries, sizes)


def heldout_clustering(cfg: TrainConfig, n_texts: int = 2000, root: Path | None = None) -> dict[str, tuple[list[str], list[str]]]:
    """Per labelled source of ``cfg`` (e.g. agnews: 4 topics, banking77: 77 intents), up to ``n_texts`` texts of rows
    that ``cfg`` never trains on, with their labels: topic clustering on held-out data (the suite's weakest spot)."""
    sources = [source(s) for s in cfg.sources]
    out: dict[str, tuple[list[str], list[str]]] = {}
    for src, (dev, _, unused) in zip(sources, split_rows(cfg, sources, random.Random(cfg.seed), root)):
        rows = [ex for ex in dev + unused if ex.label is not None]
        texts = list(dict.fromkeys((ex.positive, str(ex.label)) for ex in rows))[:n_texts]
        if len({label for _, label in texts}) >= 2:
            out[src.name] = ([t for t, _ in texts], [label for _, label in texts])
    return out


def score_clustering(model: str, sets: dict[str, tuple[list[str], list[str]]], seeds: int = 5) -> dict[str, float]:
    """V-measure x 100 of k-means (k = the number of labels, mean over ``seeds`` runs) per held-out set; texts are
    embedded plain, as the clustering tasks of the suite embed them."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import v_measure_score

    from lganna_rag.encoder import LGAnnaEncoder

    enc = LGAnnaEncoder.from_pretrained(model, precision="fp32")
    out = {}
    for name, (texts, labels) in sets.items():
        vectors = enc.encode_documents(texts, batch_size=64, show_progress_bar=True)
        k = len(set(labels))
        runs = [v_measure_score(labels, KMeans(k, n_init=1, random_state=s).fit_predict(vectors)) for s in range(seeds)]
        out[name] = round(100 * float(np.mean(runs)), 2)
    return out


_CORPUS: dict[tuple[str, ...], np.ndarray] = {}


def _corpus_vectors(enc: Any, corpus: list[str], batch_size: int) -> np.ndarray:
    """The corpus embedded as documents; reused within one process by models whose weights and document settings
    are the same files (e.g. variants that differ only in their query instructions)."""
    weights = sorted(str(p.resolve()) for p in Path(enc.model.name_or_path).glob("*.safetensors"))
    c = enc.config
    key = (*weights, str(enc.adapter_dir), c.pooling, str(c.max_length), str(c.normalize), str(len(corpus)))
    if key not in _CORPUS:
        _CORPUS[key] = enc.encode_documents(corpus, batch_size=batch_size, show_progress_bar=True)
    return _CORPUS[key]


def score_heldout(model: str, held: HeldOut, batch_size: int = 64) -> dict[str, float]:
    """nDCG@10 x 100 per source for the model (a registered name or directory), queries with their task's prompt."""
    from lganna_rag.encoder import LGAnnaEncoder

    enc = LGAnnaEncoder.from_pretrained(model, precision="fp32")
    docs = _corpus_vectors(enc, held.corpus, batch_size)
    out = {}
    for name, (task, pairs) in tqdm(held.queries.items(), desc="held-out queries"):
        q = enc.encode_queries([p[0] for p in pairs], task=task, batch_size=batch_size)
        ranks = answer_ranks(q @ docs.T, [p[1] for p in pairs])  # ties count for the answer
        out[name] = round(100 * ndcg_of_ranks(ranks, 10), 2)
    return out


def selection_summary(heldout: dict[str, float], dev_result: dict[str, Any],
                      clustering: dict[str, float] | None = None) -> dict[str, Any]:
    """Type means (held-out retrieval; held-out clustering; the dev-split tasks by type) and their mean, the
    selection score."""
    by_type: dict[str, list[float]] = {"retrieval": [mean(heldout.values())]}
    if clustering:
        by_type["clustering"] = list(clustering.values())
    for entry in dev_result["tasks"].values():
        by_type.setdefault(entry["type"], []).append(entry["main_score"])
    types = {t: round(mean(v), 2) for t, v in by_type.items()}
    return {"selection_score": round(mean(types.values()), 2), "by_type": types, "heldout": heldout,
            "clustering": clustering or {}, "dev_tasks": {k: v["main_score"] for k, v in dev_result["tasks"].items()}}


def soup(out: Path, template: Path, parts: list[tuple[Path, float]]) -> Path:
    """Write ``template`` (an lganna-rag model directory) to ``out`` with a LoRA adapter whose weight delta is
    sum(weight x delta) over ``parts`` (adapter directories). Ranks are concatenated: B = [w1 s1 B1 | w2 s2 B2 ...],
    A = [A1; A2 ...], scaling 1, so ``B @ A`` is exactly the weighted sum of the parts' scaled deltas."""
    if not parts:
        raise ValueError("soup needs at least one adapter")
    tensors: dict[str, list[np.ndarray]] = {}
    configs = []
    for directory, weight in parts:
        cfg = json.loads((directory / "adapter_config.json").read_text())
        if cfg.get("use_rslora") or cfg.get("use_dora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
            raise ValueError(f"{directory}: soup supports plain LoRA adapters (no rsLoRA, DoRA or per-module ranks)")
        scale = weight * cfg["lora_alpha"] / cfg["r"]
        configs.append(cfg)
        for key, value in load_file(str(directory / "adapter_model.safetensors")).items():
            tensors.setdefault(key, []).append(value * scale if ".lora_B." in key else value)
    if {frozenset(c["target_modules"]) for c in configs} != {frozenset(configs[0]["target_modules"])}:
        raise ValueError("the adapters target different modules")
    if any(len(v) != len(parts) for v in tensors.values()):
        raise ValueError("the adapters have different module sets")
    merged = {k: np.concatenate(v, axis=1 if ".lora_B." in k else 0).astype(np.float32) for k, v in tensors.items()}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(template, tmp)
    rank = sum(c["r"] for c in configs)
    cfg = dict(configs[0], r=rank, lora_alpha=rank, lora_dropout=0.0)
    (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(merged, str(tmp / "adapter_model.safetensors"))
    lganna = json.loads((tmp / "lganna.json").read_text())
    lganna.setdefault("provenance", {})["soup"] = [{"adapter": str(d), "weight": w} for d, w in parts]
    (tmp / "lganna.json").write_text(json.dumps(lganna, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


@click.group()
def main() -> None:
    """Model selection on held-out and dev data, and adapter soups."""


@main.command("score")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("models", nargs=-1, required=True)
@click.option("--queries", default=100, show_default=True, help="Held-out queries per asymmetric source.")
@click.option("--distractors", default=1000, show_default=True, help="Extra held-out passages per source.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("runs/select"), show_default=True)
@click.option("--clustering/--no-clustering", default=True, show_default=True,
              help="Also cluster held-out texts of the config's labelled sources (the clustering part of the score).")
def score_cmd(config: Path, models: tuple[str, ...], queries: int, distractors: int, out_dir: Path,
              clustering: bool) -> None:
    """Score MODELS (registered names or directories) on held-out retrieval and clustering and the dev splits;
    one JSON each."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local data and installed models only
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lganna_rag.benchmarks.quality import run_quality

    cfg = load_config(config)
    held = heldout_retrieval(cfg, queries, distractors)
    clusters = heldout_clustering(cfg) if clustering else {}
    sizes = {**held.sizes, "clustering": {k: len(v[0]) for k, v in clusters.items()}}
    click.echo(f"held-out retrieval and clustering: {json.dumps(sizes)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for model in models:
        heldout = score_heldout(model, held)
        clustered = score_clustering(model, clusters) if clusters else None
        (label, dev), = run_quality([model], dev=True, out_dir=out_dir, progress=click.echo).items()
        summary = {"model": model, "config": str(config), "sizes": sizes,
                   **selection_summary(heldout, dev, clustered)}
        write_json(out_dir / f"{label}.select.json", summary)
        click.echo(f"{model}: selection {summary['selection_score']}  {json.dumps(summary['by_type'])}  "
                   f"held-out {json.dumps(heldout)}")


@main.command("soup")
@click.argument("out", type=click.Path(path_type=Path))
@click.argument("parts", nargs=-1, required=True)
@click.option("--template", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="An lganna-rag model directory (lganna.json, tokenizer, pooling) to copy around the adapter.")
def soup_cmd(out: Path, parts: tuple[str, ...], template: Path) -> None:
    """Write OUT: TEMPLATE with the weighted sum of PARTS (ADAPTER_DIR[:WEIGHT], weight 1 by default)."""
    parsed = []
    for part in parts:
        path, _, weight = part.rpartition(":") if ":" in part else (part, "", "1")
        if not (Path(path) / "adapter_model.safetensors").is_file():
            raise click.BadParameter(f"{path} has no adapter_model.safetensors")
        parsed.append((Path(path), float(weight)))
    click.echo(soup(out, template, parsed))


if __name__ == "__main__":
    main()
