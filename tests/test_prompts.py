import pytest

from lganna_rag.prompts import TASK_TYPES, Task, get_task, render_query, task_names


def test_e5_template_exact():
    task = Task("t", "Find answers", examples=[("q1", "r1"), ("q2", "r2")])
    assert render_query("my question", task, "e5") == (
        "Instruct: Find answers\nQuery: q1\nResponse: r1\n\n"
        "Instruct: Find answers\nQuery: q2\nResponse: r2\n\n"
        "Instruct: Find answers\nQuery: my question"
    )


def test_bge_icl_template_exact():
    task = Task("t", "Find answers", examples=[("q1", "r1")])
    assert render_query("my question", task, "bge-icl") == (
        "<instruct>Find answers\n<query>q1\n<response>r1\n\n<instruct>Find answers\n<query>my question\n<response>"
    )
    assert render_query("x", Task("t", "I"), "bge-icl") == "<instruct>I\n<query>x\n<response>"


def test_examples_come_first_then_instruction_then_query():
    text = render_query("QUERY", Task("t", "INSTR", examples=[("EXQ", "EXR")]), "e5")
    assert text.index("EXQ") < text.index("EXR") < text.rindex("INSTR") < text.index("QUERY")
    assert text.endswith("QUERY")


def test_no_task_leaves_query_unchanged():
    assert render_query("hello", None) == "hello"


def test_unknown_template_is_rejected():
    with pytest.raises(ValueError, match="unknown prompt template 'alpaca'"):
        render_query("q", Task("t", "i"), "alpaca")


@pytest.mark.parametrize("name", TASK_TYPES)
def test_every_task_type_is_registered(name):
    task = get_task(name)
    assert task.task_type == name and task.instruction


def test_dataset_lookup_is_case_insensitive_and_knows_aliases():
    assert get_task("scifact").name == "SciFact"
    assert "scientific claim" in get_task("SciFact").instruction
    assert get_task("Banking77").name == "Banking77Classification"
    assert get_task("pair-classification").task_type == "pair_classification"


def test_every_shared_data_task_has_an_instruction(data_root):
    folders = [p.name for p in data_root.iterdir() if p.is_dir() and p.name != "train"]
    assert len(folders) >= 30
    for name in folders:
        assert get_task(name).instruction, name
    assert len(task_names()) > 60


def test_unknown_task_names_what_to_do():
    with pytest.raises(KeyError, match="Task\\(name, instruction\\)"):
        get_task("find me cat pictures")


def test_examples_override_and_validation():
    task = get_task("retrieval", examples=[("a", "b")])
    assert task.examples == (("a", "b"),)
    assert get_task(task).examples == (("a", "b"),)
    assert get_task("retrieval", examples=[{"query": "x", "response": "y"}]).examples == (("x", "y"),)
    with pytest.raises(TypeError, match="example 0"):
        get_task("retrieval", examples=["not a pair"])
    with pytest.raises(TypeError, match="example 1"):
        Task("t", "i", examples=[("a", "b"), ("a", None)])


def test_uses_instruction_follows_the_models_task_types():
    from lganna_rag.prompts import uses_instruction

    assert uses_instruction(get_task("SciFact"), None)  # no policy: every task is instructed
    assert uses_instruction(get_task("SciFact"), ["retrieval", "reranking"])
    assert not uses_instruction(get_task("STSBenchmark"), ["retrieval", "reranking"])
    assert uses_instruction(Task("mine", "Find my notes"), ["retrieval"])  # the caller's own task: always
