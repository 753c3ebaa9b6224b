import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Exact fp32 vectors in the suite's command-line runs (the CLI reads LGANNA_PRECISION; the library reads no
# environment); the CPU default and `auto` are tested explicitly in test_onnx_int8.py and test_fast.py.
os.environ["LGANNA_PRECISION"] = "fp32"
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

    return LGAnnaEncoder.from_pretrained("minilm", precision="fp32")  # exact vectors (int8 is batch-dependent)


#: Set to 1 (as ``.ci/run`` does) to make a missing shared-data folder a failure instead of a skip.
REQUIRE_DATA_ENV = "LGANNA_REQUIRE_DATA"
FIXTURES = Path(__file__).parent / "fixtures"


def missing_data_reason() -> str | None:
    """``None`` when the shared data folder exists, else a one-line reason naming ``LGANNA_DATA``."""
    from lganna_rag.data import DATA_ENV, data_dir

    path = data_dir(must_exist=False)
    if path.is_dir():
        return None
    return f"needs the shared data: {DATA_ENV}={path} does not exist (set {DATA_ENV} to the data folder)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_data: reads the shared data in $LGANNA_DATA (skipped when it is absent, "
                                       "unless LGANNA_REQUIRE_DATA=1)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or, with LGANNA_REQUIRE_DATA=1, fail) tests that need the shared data when it is absent."""
    if item.get_closest_marker("needs_data") is None and "data_root" not in getattr(item, "fixturenames", ()):
        return
    reason = missing_data_reason()
    if reason is None:
        return
    if os.environ.get(REQUIRE_DATA_ENV, "") not in ("", "0"):
        pytest.fail(f"{reason}; {REQUIRE_DATA_ENV} is set, so this is a failure", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared data folder (tests using it are skipped when it is absent; see ``pytest_runtest_setup``)."""
    from lganna_rag.data import data_dir

    return data_dir()


@pytest.fixture(scope="session")
def sts_pairs() -> list[dict]:
    """Real sentence pairs with 0-5 similarity scores, committed under tests/fixtures (no shared data needed)."""
    with open(FIXTURES / "sts_pairs.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="session")
def sts_sentences(sts_pairs) -> list[str]:
    """The distinct sentences of :func:`sts_pairs`, in order."""
    return list(dict.fromkeys(s for row in sts_pairs for s in (row["sentence1"], row["sentence2"])))
