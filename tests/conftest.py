import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

from tiny_models import tiny_model_dir  # noqa: E402


@pytest.fixture(scope="session")
def mistral_dir() -> Path:
    return tiny_model_dir("mistral")


@pytest.fixture(scope="session")
def llama_dir() -> Path:
    return tiny_model_dir("llama")


@pytest.fixture(scope="session")
def mistral(mistral_dir):
    from lganna_rag import LGAnnaEncoder

    return LGAnnaEncoder.from_pretrained(mistral_dir)


@pytest.fixture(scope="session")
def minilm():
    from lganna_rag import LGAnnaEncoder

    return LGAnnaEncoder.from_pretrained("minilm")


@pytest.fixture(scope="session")
def data_root() -> Path:
    from lganna_rag.data import data_dir

    return data_dir()


@pytest.fixture(scope="session")
def stsb_sentences(data_root) -> list[str]:
    """Real sentences: the first pairs of the STSBenchmark test set."""
    out = []
    with open(data_root / "STSBenchmark" / "test.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            out += [row["sentence1"], row["sentence2"]]
    return out
