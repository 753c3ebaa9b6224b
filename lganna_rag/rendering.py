"""How a query reaches the model: the task's instruction and the few-shot examples that fit, in the model's
template, and the prompt positions a mean pool leaves out (a mixin of :class:`~lganna_rag.encoder.LGAnnaEncoder`)."""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Sequence

from .models import ModelConfig
from .prompts import Task, get_task, query_prefix, render_query, uses_instruction, with_model_instruction


def check_texts(texts: Any) -> list[str]:
    """Return ``texts`` as a list of str, raising ``TypeError`` that names the first bad item."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str (got {t!r:.60})")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"texts[{i}] has a lone surrogate (U+{ord(t[exc.start]):04X}) at character {exc.start}: not valid "
                f"Unicode, so the tokenizer cannot read it; clean it first, e.g. "
                f"text.encode('utf-8', 'replace').decode('utf-8')"
            ) from None
    return texts


class PromptIgnoredWarning(UserWarning):
    """A task, instruction or few-shot examples were given to a model without a prompt template (no effect)."""


class QueryRendering:
    """Query rendering for an encoder with a ``tokenizer``, a ``config`` (:class:`ModelConfig`) and a ``name``."""

    tokenizer: Any
    config: ModelConfig
    name: str

    def render_queries(
        self, texts: Sequence[str], task: Task | str | None = None, examples: Iterable[Sequence[str]] | None = None
    ) -> list[str]:
        """The exact strings ``encode_queries`` feeds the model (before tokenisation)."""
        items = check_texts(texts)
        template = self.config.prompt_template
        if template is None:
            if (task is not None or examples) and not getattr(self, "_warned_prompt_ignored", False):
                self._warned_prompt_ignored = True
                warnings.warn(
                    f"model {self.name!r} has no prompt template (it was not trained with instructions): the task, "
                    f"instruction and few-shot examples have no effect; queries are embedded as plain text",
                    PromptIgnoredWarning, stacklevel=3,
                )
            return items
        resolved = get_task(task if task is not None else self.config.default_task, examples)
        resolved = with_model_instruction(resolved, self.config.task_instructions)
        if not uses_instruction(resolved, self.config.instruction_task_types):
            return items  # trained without instructions for this task type (lganna.json: instruction_task_types)
        return [self.fit_query(t, resolved) for t in items]

    def fit_query(self, text: str, task: Task, max_length: int | None = None) -> str:
        """Render ``text`` for ``task``, dropping the earliest few-shot examples until it fits ``max_length`` tokens.

        Truncation keeps the start of a text, so an over-long prompt would otherwise lose the query
        itself (and, with last-token pooling, the token the embedding is read from).
        """
        template = self.config.prompt_template or "e5"
        rendered = render_query(text, task, template)
        if not task.examples:
            return rendered
        limit = (max_length or self.config.max_length) - int(self.config.append_eos)
        examples = list(task.examples)
        while examples and len(self.tokenizer(rendered, add_special_tokens=True)["input_ids"]) > limit:
            examples.pop(0)
            rendered = render_query(text, task.with_examples(examples), template)
        return rendered

    def _prompt_lengths(self, rendered: Sequence[str], items: Sequence[str]) -> list[int]:
        """Per query, the positions of its rendered prompt that a mean pool leaves out."""
        known: dict[str | None, int] = {}  # one task's queries share a prefix: tokenise it once
        lengths = []
        for r, t in zip(rendered, items):
            prefix = query_prefix(r, t)
            if prefix not in known:
                known[prefix] = self.prompt_length(prefix)
            lengths.append(known[prefix])
        return lengths

    @property
    def excludes_prompt(self) -> bool:
        """True when instruction and example tokens are attended to but left out of the pooled mean."""
        return self.config.pooling == "mean" and not self.config.include_prompt

    def prompt_length(self, prefix: str | None) -> int:
        """Positions masked out of the mean for a query whose rendered prompt is ``prefix``.

        The rule of sentence-transformers (``Transformer._get_prompt_length``): the prefix tokenised
        with special tokens, less a trailing special token, so ``SentenceTransformer(path).encode(q,
        prompt=prefix)`` gives the same vector.
        """
        if not prefix:
            return 0
        ids = self.tokenizer(prefix, add_special_tokens=True)["input_ids"]
        if ids and ids[-1] in set(self.tokenizer.all_special_ids):
            return len(ids) - 1
        return len(ids)
