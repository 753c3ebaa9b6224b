"""Task instructions and the one place where query prompts are rendered.

A query is embedded as: few-shot examples (if any), then the task instruction, then the query.
Documents are embedded as plain text. The template a model was trained with is stored in its
``lganna.json`` (``prompt_template`` + ``prompt_version``) so it is always served the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

#: Version of the rendering rules below; bump it whenever a template's output changes.
PROMPT_VERSION = 1

#: The task types of MTEB, in our spelling.
TASK_TYPES = (
    "retrieval",
    "reranking",
    "sts",
    "classification",
    "clustering",
    "pair_classification",
    "summarization",
)

#: Task types whose two sides are the same kind of text: both sides get the instruction.
SYMMETRIC_TASK_TYPES = frozenset({"sts", "classification", "clustering", "pair_classification", "summarization"})


@dataclass(frozen=True)
class Task:
    """A task: a name, the instruction given to the model, and optional few-shot examples.

    ``examples`` are ``(query, response)`` pairs shown before the query (in-context learning).
    """

    name: str
    instruction: str
    examples: tuple[tuple[str, str], ...] = field(default=())
    task_type: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.instruction, str):
            raise TypeError(f"Task.instruction must be a str, got {type(self.instruction).__name__}")
        object.__setattr__(self, "examples", _check_examples(self.examples))

    def with_examples(self, examples: Iterable[Sequence[str]] | None) -> "Task":
        """Return a copy of this task with ``examples`` replacing its own (``None`` keeps them)."""
        if examples is None:
            return self
        return replace(self, examples=_check_examples(examples))


def _check_examples(examples: Iterable[Sequence[str]]) -> tuple[tuple[str, str], ...]:
    out = []
    for i, ex in enumerate(examples):
        if isinstance(ex, dict):
            ex = (ex.get("query"), ex.get("response", ex.get("positive")))
        if (
            isinstance(ex, (str, bytes))
            or len(ex) != 2
            or not all(isinstance(part, str) for part in ex)
        ):
            raise TypeError(
                f"example {i} must be a (query, response) pair of strings or a dict with "
                f"'query' and 'response' keys, got {ex!r}"
            )
        out.append((ex[0], ex[1]))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------
#: Named template presets. Each is (example format, separator between blocks, query format).
_TEMPLATES: dict[str, tuple[str, str, str]] = {
    # e5-mistral / LG-ANNA style; examples have the same shape, followed by their response.
    "e5": (
        "Instruct: {instruction}\nQuery: {query}\nResponse: {response}",
        "\n\n",
        "Instruct: {instruction}\nQuery: {query}",
    ),
    # bge-en-icl style with the <instruct>/<query>/<response> special tokens.
    "bge-icl": (
        "<instruct>{instruction}\n<query>{query}\n<response>{response}",
        "\n\n",
        "<instruct>{instruction}\n<query>{query}\n<response>",
    ),
    # A literal prefix (bge-en-v1.5: "Represent this sentence for searching relevant passages: " + query); an
    # instruction that does not end in whitespace is joined to the query with a space.
    "prefix": (
        "{instruction}{query}\n{response}",
        "\n\n",
        "{instruction}{query}",
    ),
}

TEMPLATES = tuple(_TEMPLATES)


def render_query(query: str, task: Task | None, template: str = "e5") -> str:
    """Render ``query`` for ``task`` with a named template: examples, then instruction, then query.

    With ``task=None`` (or an empty instruction and no examples) the query is returned unchanged.
    """
    if template not in _TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; choose one of {', '.join(TEMPLATES)}")
    if task is None or (not task.instruction and not task.examples):
        return query
    example_fmt, sep, query_fmt = _TEMPLATES[template]
    instruction = task.instruction
    if template == "prefix" and instruction and not instruction[-1].isspace():
        instruction += " "
    blocks = [example_fmt.format(instruction=instruction, query=q, response=r) for q, r in task.examples]
    blocks.append(query_fmt.format(instruction=instruction, query=query))
    return sep.join(blocks)


def uses_instruction(task: Task, task_types: Iterable[str] | None) -> bool:
    """Whether a model instructed only for ``task_types`` (``None``: every type) prompts ``task``'s texts.

    A task without a type (the caller's own ``Task(name, instruction)``) is always prompted.
    """
    return task_types is None or task.task_type is None or task.task_type in task_types


def with_model_instruction(task: Task, task_instructions: dict[str, str] | None) -> Task:
    """``task`` with the instruction a model was trained with for its type (``task_instructions``), if any."""
    if not task_instructions or task.task_type not in task_instructions:
        return task
    return replace(task, instruction=task_instructions[task.task_type])


def query_prefix(rendered: str, query: str) -> str | None:
    """The prompt part of a rendered query: ``rendered`` minus the trailing ``query``, or ``None``.

    Mean-pooled models exclude these tokens from the pooled mean (they are attended to, not averaged),
    as sentence-transformers' ``Pooling(include_prompt=False)`` does. ``None`` when the template does
    not end with the query (e.g. ``bge-icl``), so there is no prefix to exclude.
    """
    if not rendered.endswith(query):
        return None
    return rendered[: len(rendered) - len(query)]


# ---------------------------------------------------------------------------------------------
# Instruction registry
# ---------------------------------------------------------------------------------------------
_TYPE_INSTRUCTIONS = {
    "retrieval": "Given a query, retrieve relevant passages that answer the query",
    "reranking": "Given a query, retrieve relevant passages that answer the query",
    "sts": "Retrieve semantically similar text",
    "classification": "Classify the given text by its topic, intent or sentiment",
    "clustering": "Identify the topic or theme of the given text",
    "pair_classification": "Retrieve text that is semantically equivalent to the given text",
    "summarization": "Given a news summary, retrieve other semantically similar summaries",
}

_STS = "Retrieve semantically similar text"

# (task type, instruction) per dataset. Names are MTEB task names and the folder names of the
# shared data (see ../shared/data/MANIFEST*.md); look-ups are case-insensitive.
_DATASET_INSTRUCTIONS: dict[str, tuple[str, str]] = {
    # retrieval
    "SciFact": ("retrieval", "Given a scientific claim, retrieve documents that support or refute the claim"),
    "ArguAna": ("retrieval", "Given a claim, find documents that refute the claim"),
    "NFCorpus": ("retrieval", "Given a question, retrieve relevant documents that best answer the question"),
    "SCIDOCS": ("retrieval", "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper"),
    "FiQA2018": ("retrieval", "Given a financial question, retrieve user replies that best answer the question"),
    "TRECCOVID": ("retrieval", "Given a query on COVID-19, retrieve documents that answer the query"),
    "Touche2020": ("retrieval", "Given a question, retrieve detailed and persuasive arguments that answer the question"),
    "NQ": ("retrieval", "Given a question, retrieve Wikipedia passages that answer the question"),
    "HotpotQA": ("retrieval", "Given a multi-hop question, retrieve documents that can help answer the question"),
    "MSMARCO": ("retrieval", "Given a web search query, retrieve relevant passages that answer the query"),
    "FEVER": ("retrieval", "Given a claim, retrieve documents that support or refute the claim"),
    "ClimateFEVER": ("retrieval", "Given a claim about climate change, retrieve documents that support or refute the claim"),
    "DBPedia": ("retrieval", "Given a query, retrieve relevant entity descriptions from DBPedia"),
    "QuoraRetrieval": ("retrieval", "Given a question, retrieve questions that are semantically equivalent to the given question"),
    "CQADupstackRetrieval": ("retrieval", "Given a question, retrieve detailed question descriptions from Stackexchange that are duplicates to the given question"),
    "Cranfield": ("retrieval", "Given an aeronautics research question, retrieve abstracts of relevant papers"),
    "CACM": ("retrieval", "Given a computer science information need, retrieve relevant article titles and abstracts"),
    "NPL": ("retrieval", "Given a physics or electronics query, retrieve relevant technical abstracts"),
    # reranking
    "TrecQA": ("reranking", "Given a question, retrieve sentences that answer the question"),
    "WikiQA": ("reranking", "Given a question, retrieve Wikipedia sentences that answer the question"),
    "LiveQAMedicalReranking": ("reranking", "Given a consumer health question, retrieve answers that address it"),
    "AskUbuntuDupQuestions": ("reranking", "Retrieve duplicate questions from AskUbuntu forum"),
    "StackOverflowDupQuestions": ("reranking", "Retrieve duplicate questions from StackOverflow forum"),
    "SciDocsRR": ("reranking", "Given a title of a scientific paper, retrieve the titles of other relevant papers"),
    "MindSmallReranking": ("reranking", "Retrieve relevant news articles based on user browsing history"),
    # sts
    **{name: ("sts", _STS) for name in (
        "STS12", "STS13", "STS14", "STS15", "STS16", "STS17", "STS22", "STSBenchmark", "SICK-R", "BIOSSES",
    )},
    # classification
    "Banking77Classification": ("classification", "Given an online banking query, find the corresponding intents"),
    "AmazonCounterfactualClassification": ("classification", "Classify a given Amazon customer review text as either counterfactual or not-counterfactual"),
    "AmazonPolarityClassification": ("classification", "Classify Amazon reviews into positive or negative sentiment"),
    "AmazonReviewsClassification": ("classification", "Classify the given Amazon review into its appropriate rating category"),
    "EmotionClassification": ("classification", "Classify the emotion expressed in the given Twitter message into one of the six emotions: anger, fear, joy, love, sadness, and surprise"),
    "ImdbClassification": ("classification", "Classify the sentiment expressed in the given movie review text from the IMDB dataset"),
    "MassiveIntentClassification": ("classification", "Given a user utterance as query, find the user intents"),
    "MassiveScenarioClassification": ("classification", "Given a user utterance as query, find the user scenarios"),
    "MTOPDomainClassification": ("classification", "Classify the intent domain of the given utterance in task-oriented conversation"),
    "MTOPIntentClassification": ("classification", "Classify the intent of the given utterance in task-oriented conversation"),
    "ToxicConversationsClassification": ("classification", "Classify the given comments as either toxic or not toxic"),
    "TweetSentimentExtractionClassification": ("classification", "Classify the sentiment of a given tweet as either positive, negative, or neutral"),
    "Clinc150": ("classification", "Given a user utterance as query, find the user intents"),
    "TRECQuestionClassification": ("classification", "Classify the given question by the type of answer it asks for"),
    "SST2": ("classification", "Classify the sentiment expressed in the given movie review sentence as positive or negative"),
    # clustering
    "TwentyNewsgroupsClustering": ("clustering", "Identify the topic or theme of the given news articles"),
    "Banking77Clustering": ("clustering", "Identify the intent of the given online banking queries"),
    "StackOverflowTitleClustering": ("clustering", "Identify the topic or theme of StackOverflow posts based on the titles"),
    "StackExchangeClustering": ("clustering", "Identify the topic or theme of StackExchange posts based on the titles"),
    "BiomedicalTitleClustering": ("clustering", "Identify the main category of biomedical papers based on the titles"),
    "ArxivClusteringS2S": ("clustering", "Identify the main and secondary category of Arxiv papers based on the titles"),
    "ArxivClusteringP2P": ("clustering", "Identify the main and secondary category of Arxiv papers based on the titles and abstracts"),
    "BiorxivClusteringS2S": ("clustering", "Identify the main category of Biorxiv papers based on the titles"),
    "MedrxivClusteringS2S": ("clustering", "Identify the main category of Medrxiv papers based on the titles"),
    "RedditClustering": ("clustering", "Identify the topic or theme of Reddit posts based on the titles"),
    # pair classification
    "TwitterSemEval2015": ("pair_classification", "Retrieve tweets that are semantically similar to the given tweet"),
    "TwitterURLCorpus": ("pair_classification", "Retrieve tweets that are semantically similar to the given tweet"),
    "SprintDuplicateQuestions": ("pair_classification", "Retrieve duplicate questions from Sprint forum"),
    "MSRP": ("pair_classification", "Retrieve sentences that are paraphrases of the given sentence"),
    "RQEMedicalPairs": ("pair_classification", "Given a consumer health question, retrieve frequently asked questions that it entails"),
    # summarization
    "SummEval": ("summarization", "Given a news summary, retrieve other semantically similar summaries"),
}

# Folder names of ../shared/data that differ from the MTEB task name.
_ALIASES = {
    "Banking77": "Banking77Classification",
    "AmazonCounterfactual": "AmazonCounterfactualClassification",
    "TweetSentimentExtraction": "TweetSentimentExtractionClassification",
}


def _build_registry() -> dict[str, Task]:
    reg: dict[str, Task] = {}
    for task_type, instruction in _TYPE_INSTRUCTIONS.items():
        reg[task_type] = Task(task_type, instruction, task_type=task_type)
    for name, (task_type, instruction) in _DATASET_INSTRUCTIONS.items():
        reg[name.lower()] = Task(name, instruction, task_type=task_type)
    for alias, name in _ALIASES.items():
        reg[alias.lower()] = reg[name.lower()]
    return reg


_REGISTRY = _build_registry()


def task_names() -> list[str]:
    """All registered task names: the task types first, then the datasets."""
    return list(_TYPE_INSTRUCTIONS) + sorted(_DATASET_INSTRUCTIONS) + sorted(_ALIASES)


def get_task(task: Task | str, examples: Iterable[Sequence[str]] | None = None) -> Task:
    """Resolve ``task`` (a :class:`Task`, a registered name, or ``type:...``) to a :class:`Task`.

    A free-form string that is not a registered name is rejected; wrap your own instruction in
    ``Task(name, instruction)`` instead. ``examples`` (query, response) replace the task's examples.
    """
    if isinstance(task, Task):
        return task.with_examples(examples)
    if not isinstance(task, str):
        raise TypeError(f"task must be a Task or a registered task name, got {type(task).__name__}")
    found = _REGISTRY.get(task.lower()) or _REGISTRY.get(task.lower().replace("-", "_"))
    if found is None:
        raise KeyError(
            f"unknown task {task!r}. Use a task type ({', '.join(TASK_TYPES)}), a registered dataset name "
            f"(see lganna_rag.prompts.task_names()), or pass Task(name, instruction) for your own instruction"
        )
    return found.with_examples(examples)
