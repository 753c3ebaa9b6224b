"""Side by side on the CPU: lganna-rag's precisions (and the other runtimes it could use: ONNX Runtime's transformer
optimizer with dynamic or static int8, OpenVINO fp32) against sentence-transformers (PyTorch, its ONNX
backend and its dynamically quantized ONNX export) and fastembed, on the same model files and the same texts.

Each engine runs in its own process (:mod:`lganna_rag.benchmarks.engine_worker`; the peers from another
virtualenv, ``--peers-python``: sentence-transformers' ONNX backend needs optimum, whose transformers pin differs from
ours), loaded once; rounds alternate over the engines so machine noise falls on all of them alike, and each engine's
best round counts. Texts: short queries (SciFact claims), and SciFact abstracts cut to 128 and to 256 tokens (the same
strings for every engine). Throughput is reported as a ratio to lganna-rag fp32 (PyTorch) in the same run. Quality
per engine: cosine to the fp32 vectors, STSBenchmark test Spearman, SciFact nDCG@10 (queries with the model's query
prompt, abstracts cut at 256 tokens).

    python -m lganna_rag.benchmarks.engines --models minilm,bge-small --threads 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lganna_rag.data import data_dir, read_jsonl
from lganna_rag.metrics import ndcg_at_k

from .quality import RESULTS_DIR, _versions
from .tasks import load_retrieval

LGANNA_ENGINES = ("lganna:fp32", "lganna:bf16", "lganna:bf16-openvino", "lganna:int8-onnx")
#: Other runtimes for lganna-rag's encoders, built in the worker from the same fp32 export (measured, not shipped).
VARIANT_ENGINES = ("variant:ort-int8-opt", "variant:ort-int8-static", "variant:openvino-fp32")
PEER_ENGINES = ("st", "st-onnx", "st-onnx-qint8", "fastembed")
SETS = ("queries", "passages-128", "passages-256")
WORKER = Path(__file__).resolve().parent / "engine_worker.py"
#: The peers' virtualenv that ``make bench-peers`` creates beside the repository's own.
PEERS_PYTHON = Path(__file__).resolve().parents[1] / ".venv-peers" / "bin" / "python"


def _cut(tokenizer: Any, texts: list[str], tokens: int) -> list[str]:
    """Each text cut to its first ``tokens`` tokens (at a token's end), so no engine truncates differently."""
    out = []
    for text in texts:
        spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        out.append(text[: spans[min(tokens, len(spans)) - 1][1]] if spans else text)
    return out


def text_sets(tokenizer: Any, n: int) -> dict[str, list[str]]:
    """The timed texts: ``n`` SciFact claims, and ``n`` SciFact abstracts cut to 126 and 254 tokens (room for the
    special tokens: 128 and 256 in all)."""
    root = data_dir() / "SciFact"
    queries = [r["text"] for r in read_jsonl(root / "queries.jsonl")][:n]
    docs = [f"{r.get('title', '')} {r['text']}".strip() for r in read_jsonl(root / "corpus.jsonl")]
    docs = [d for d in docs if len(d) > 1500][:n]  # long enough to fill 256 tokens
    return {"queries": queries, "passages-128": _cut(tokenizer, docs, 126), "passages-256": _cut(tokenizer, docs, 254)}


def peer_folders(model: str, work: Path) -> dict[str, Any]:
    """The model files the peers load: a sentence-transformers folder, and a folder with an ONNX file and the
    tokenizer for fastembed (MiniLM: its fp32 ONNX export; bge-small: the int8 graph it ships as)."""
    from lganna_rag import LGAnnaEncoder
    from lganna_rag.models import REGISTRY

    enc = LGAnnaEncoder.from_pretrained(model, precision="fp32", device="cpu")
    st_dir = Path(enc.model.name_or_path)
    fe_dir = work / f"fastembed-{model}"
    fe_dir.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "special_tokens_map.json", "vocab.txt"):
        if (st_dir / name).is_file():
            shutil.copy(st_dir / name, fe_dir / name)
    shipped = REGISTRY[model].onnx if model in REGISTRY else None
    if shipped is not None:
        shutil.copy(shipped() / "model_quantized.onnx", fe_dir / "model.onnx")
    else:
        from lganna_rag.onnx_int8 import export_fp32

        export_fp32(enc.model, fe_dir / "model.onnx", pad_id=enc.pad_token_id)
    return {"st": str(st_dir), "fastembed": str(fe_dir), "pooling": enc.config.pooling, "encoder": enc}


class Engine:
    """A worker process holding one engine."""

    def __init__(self, name: str, model_arg: str, python: str, *, pooling: str, threads: int, max_length: int,
                 work: Path) -> None:
        self.name = name
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(
            [python, str(WORKER), "--engine", name, "--model", model_arg, "--pooling", pooling, "--threads",
             str(threads), "--max-length", str(max_length), "--work", str(work / name.replace(":", "-"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.loaded = self._answer()["loaded"]

    def _answer(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"engine {self.name} stopped (exit {self.proc.wait()})")
        return json.loads(line)

    def ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Send one command and wait for its answer."""
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        """Ask the worker to quit."""
        if self.proc.poll() is None:
            self.proc.stdin.write('{"cmd": "quit"}\n')
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def _files(work: Path, sets: dict[str, list[str]]) -> dict[str, str]:
    paths = {}
    for name, texts in sets.items():
        paths[name] = str(work / f"{name}.json")
        Path(paths[name]).write_text(json.dumps(texts), encoding="utf-8")
    return paths


def time_engines(engines: list[Engine], paths: dict[str, str], n: int, rounds: int) -> dict[str, dict[str, float]]:
    """Texts/s per engine and text set: the best of ``rounds`` alternating rounds (the engine order rotates)."""
    best: dict[str, dict[str, float]] = {e.name: {} for e in engines}
    for r in range(rounds):
        order = engines[r % len(engines):] + engines[:r % len(engines)]
        for name, path in paths.items():
            for e in order:
                tps = n / e.ask({"cmd": "time", "texts": path, "batch": 32})["seconds"]
                best[e.name][name] = max(best[e.name].get(name, 0.0), round(tps, 2))
    return best


def quality(engines: list[Engine], encoder: Any, work: Path, passages: str,
            scifact_docs: int | None = None) -> dict[str, dict[str, float]]:
    """Per engine: cosine to lganna fp32 on the 128-token passages, STSBenchmark test Spearman, SciFact nDCG@10
    (over its whole corpus, or with ``scifact_docs``: every judged document plus a fixed random sample of the
    others up to that many, the same for every engine)."""
    from scipy.stats import spearmanr

    sts = list(read_jsonl(data_dir() / "STSBenchmark" / "test.jsonl"))
    sentences = list(dict.fromkeys(s for r in sts for s in (r["sentence1"], r["sentence2"])))
    scifact = load_retrieval("SciFact")
    qrels, queries = scifact.qrels, scifact.queries
    doc_ids, texts = scifact.document_texts()
    corpus = dict(zip(doc_ids, texts))
    if scifact_docs is not None and scifact_docs < len(doc_ids):
        judged = {d for rel in qrels.values() for d in rel}
        others = [d for d in doc_ids if d not in judged]
        rng = np.random.default_rng(0)
        keep = judged | set(rng.choice(others, max(0, scifact_docs - len(judged)), replace=False).tolist())
        doc_ids = [d for d in doc_ids if d in keep]
    inputs = {"sts": sentences, "docs": _cut(encoder.tokenizer, [corpus[d] for d in doc_ids], 254),
              "queries": encoder.render_queries(list(queries.values()), "SciFact")}
    paths = _files(work, inputs)
    vectors: dict[str, dict[str, np.ndarray]] = {}
    for e in engines:
        vectors[e.name] = {}
        for name, path in {**paths, "passages": passages}.items():
            out = work / f"{e.name.replace(':', '-')}-{name}.npy"
            e.ask({"cmd": "embed", "texts": path, "out": str(out), "batch": 32})
            vectors[e.name][name] = np.load(out)
    ref = vectors["lganna:fp32"]["passages"]
    index = {s: i for i, s in enumerate(sentences)}
    gold = [float(r["score"]) for r in sts]
    out: dict[str, dict[str, float]] = {}
    for name, v in vectors.items():
        cos = (v["passages"] * ref).sum(1)
        a = v["sts"][[index[r["sentence1"]] for r in sts]]
        b = v["sts"][[index[r["sentence2"]] for r in sts]]
        scores = v["queries"] @ v["docs"].T
        run = {qid: {doc_ids[j]: float(scores[i, j]) for j in np.argsort(-scores[i])[:100]}
               for i, qid in enumerate(queries)}
        out[name] = {"min_cos": round(float(cos.min()), 4), "mean_cos": round(float(cos.mean()), 4),
                     "stsb": round(100 * float(spearmanr((a * b).sum(1), gold).statistic), 2),
                     "scifact": round(100 * ndcg_at_k(run, qrels, 10), 2)}
    return out


def run(models: list[str], threads: list[int], rounds: int, n: int, peers_python: str | None,
        with_quality: bool, out_dir: Path, index_folder: Path | None = None,
        scifact_docs: int | None = None) -> dict[str, Any]:
    """Measure every engine for every model and thread count (and, with ``index_folder``, ``lganna-rag index`` of
    that folder at fp32 and at ``auto``); write ``engines.json`` and ``engines.md``."""
    result: dict[str, Any] = {"versions": _versions(), "machine": _machine(), "n": n, "rounds": rounds,
                              "peers_python": peers_python, "scifact_docs": scifact_docs, "models": {}}
    for model in models:
        with tempfile.TemporaryDirectory(prefix="lganna-engines-") as tmp:
            work = Path(tmp)
            files = peer_folders(model, work)
            sets = text_sets(files["encoder"].tokenizer, n)
            paths = _files(work, sets)
            entry: dict[str, Any] = {"texts_per_second": {}, "ratio_to_fp32": {}, "load_seconds": {}}
            peers = PEER_ENGINES if peers_python else ()
            for t in threads:
                engines = _start(model, files, peers_python, peers, t, work)
                try:
                    tps = time_engines(engines, paths, n, rounds)
                    entry["texts_per_second"][str(t)] = tps
                    entry["ratio_to_fp32"][str(t)] = {e: {s: round(v / tps["lganna:fp32"][s], 2) for s, v in sets_.items()}
                                                      for e, sets_ in tps.items()}
                    entry["load_seconds"][str(t)] = {e.name: e.loaded for e in engines}
                    if with_quality and t == max(threads):
                        entry["quality"] = quality(engines, files["encoder"], work, paths["passages-128"], scifact_docs)
                finally:
                    for e in engines:
                        e.close()
            if index_folder is not None:
                entry["index"] = index_throughput(index_folder, model, ["fp32", "auto"], work)
            result["models"][model] = entry
            print(json.dumps({model: entry["ratio_to_fp32"]}), flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "engines.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "engines.md").write_text(report(result))
    return result


def _start(model: str, files: dict[str, Any], peers_python: str | None, peers: tuple[str, ...], threads: int,
           work: Path) -> list[Engine]:
    import importlib.util

    ours = [e for e in (*LGANNA_ENGINES, *VARIANT_ENGINES) if "openvino" not in e or importlib.util.find_spec("openvino")]
    engines = [Engine(e, model, sys.executable, pooling=files["pooling"], threads=threads, max_length=512, work=work)
               for e in ours]
    for e in peers:
        arg = files["fastembed"] if e == "fastembed" else files["st"]
        engines.append(Engine(e, arg, peers_python, pooling=files["pooling"], threads=threads, max_length=512,
                              work=work))
    return engines


def index_throughput(folder: Path, model: str, precisions: list[str], work: Path) -> dict[str, Any]:
    """End to end: ``lganna-rag index FOLDER`` into a fresh store at each precision (one process each, in turn):
    chunks/s without the model's loading time, as the command reports it."""
    out: dict[str, Any] = {"folder": str(folder)}
    for p in precisions:
        store = work / f"index-{p}"
        run_ = subprocess.run([sys.executable, "-m", "lganna_rag.cli", "index", str(folder), "--path", str(store),
                               "--model", model, "--precision", p, "--json", "--quiet"], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=7200)
        if run_.returncode != 0:
            raise RuntimeError(f"index at {p} failed: {run_.stderr[-1000:]}")
        report = json.loads(run_.stdout)
        out[p] = {k: report[k] for k in ("files_indexed", "chunks_written", "seconds", "load_seconds",
                                          "chunks_per_second")}
        shutil.rmtree(store, ignore_errors=True)
    base = out[precisions[0]]["chunks_per_second"]
    for p in precisions:
        out[p]["ratio_to_fp32"] = round(out[p]["chunks_per_second"] / base, 2)
    return out


def _machine() -> dict[str, Any]:
    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "flags": [f for f in wanted if f" {f}" in flags]}


def report(result: dict[str, Any]) -> str:
    """The Markdown tables of ``engines.json``."""
    lines = ["# CPU engines side by side", "",
             f"`python -m lganna_rag.benchmarks.engines`; {result['n']} texts per set, best of {result['rounds']} "
             f"alternating rounds, one process per engine; CPU flags {', '.join(result['machine']['flags'])}, "
             f"{result['machine']['cores']} cores. Texts/s, and in brackets the ratio to lganna-rag fp32 (PyTorch) "
             f"in the same run.", ""]
    for model, entry in result["models"].items():
        for t, tps in entry["texts_per_second"].items():
            lines += [f"## {model}, {t} thread{'s' if t != '1' else ''}", "",
                      "| engine | " + " | ".join(SETS) + " |", "|---|" + "---:|" * len(SETS)]
            for engine, by_set in tps.items():
                ratio = entry["ratio_to_fp32"][t][engine]
                lines.append(f"| {engine} | " + " | ".join(f"{by_set[s]:.1f} ({ratio[s]:.2f}x)" for s in SETS) + " |")
            lines.append("")
        if "index" in entry:
            x = entry["index"]
            lines += [f"## {model}: `lganna-rag index {x['folder']}`", "", "| precision | files | chunks | chunks/s | ratio |",
                      "|---|---:|---:|---:|---:|"]
            for p in ("fp32", "auto"):
                lines.append(f"| {p} | {x[p]['files_indexed']} | {x[p]['chunks_written']} | {x[p]['chunks_per_second']:.1f} "
                             f"| {x[p]['ratio_to_fp32']:.2f}x |")
            lines.append("")
        if "quality" in entry:
            sub = result.get("scifact_docs")
            lines += [f"## {model}: quality", "", "| engine | min / mean cosine to fp32 | STSB test | SciFact nDCG@10"
                      + (f" ({sub:,}-document subset: the judged ones + a fixed sample)" if sub else "") + " |",
                      "|---|---:|---:|---:|"]
            for engine, q in entry["quality"].items():
                lines.append(f"| {engine} | {q['min_cos']:.4f} / {q['mean_cos']:.4f} | {q['stsb']:.2f} | {q['scifact']:.2f} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="minilm,bge-small")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--peers-python", default=str(PEERS_PYTHON),
                    help="Python of the peers' virtualenv (make bench-peers); missing: lganna-rag's engines only")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--index-folder", type=Path, default=None,
                    help="also time `lganna-rag index` of this folder at fp32 and at auto")
    ap.add_argument("--scifact-docs", type=int, default=None,
                    help="SciFact quality over the judged documents plus a fixed sample up to this many (default: all)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    peers = args.peers_python if Path(args.peers_python).is_file() else None
    if peers is None:
        print(f"no peers' virtualenv at {args.peers_python}: measuring lganna-rag's engines only", file=sys.stderr)
    t0 = time.time()
    run([m for m in args.models.split(",") if m], [int(t) for t in args.threads.split(",")], args.rounds, args.n,
        peers, not args.no_quality, args.out, args.index_folder, args.scifact_docs)
    print(f"wrote {args.out / 'engines.json'} and engines.md in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
