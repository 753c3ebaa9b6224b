"""The house rules of the core, read from the source: imports point one way, rooms stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "lganna_rag"
PARTS = ("training", "benchmarks", "integrations")


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(CORE.glob("*.py"))}


def _imports(tree: ast.Module, names: set[str]) -> tuple[set[str], set[str]]:
    """Core modules imported (anywhere in the file, inside functions too) and other lganna_rag parts imported."""
    core, parts = set(), set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                targets = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            elif node.module and node.module.startswith("lganna_rag"):
                rest = node.module.split(".")[1:]
                targets = rest[:1] if rest else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".")[1] for a in node.names if a.name.startswith("lganna_rag.")]
        core |= {t for t in targets if t in names}
        parts |= {t for t in targets if t in PARTS}
    return core, parts


def test_core_imports_form_no_circle_and_never_reach_the_other_parts():
    modules = _modules()
    graph = {}
    for name, tree in modules.items():
        core, parts = _imports(tree, set(modules))
        if name != "__init__":  # the package's lazy front door names LGAnnaEmbeddings (type hints only)
            assert not parts, f"lganna_rag/{name}.py imports {sorted(parts)}"
        graph[name] = core - {name}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError(f"import circle: {' -> '.join(path[path.index(node):] + [node])}")
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, path + [node])
        done.add(node)

    for name in graph:
        visit(name, [])


def test_rooms_stay_small_and_no_caller_branches_on_a_backend_class():
    for path in sorted(CORE.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            size = (node.end_lineno or 0) - node.lineno + 1 if hasattr(node, "lineno") else 0
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert size <= 80, f"{path.name}:{node.lineno} {node.name} is {size} lines"
            elif isinstance(node, ast.ClassDef):
                assert size <= 320, f"{path.name}:{node.lineno} class {node.name} is {size} lines"
        if path.name != "stores.py":
            assert "isinstance(" not in source or "EdgeBackend)" not in source, path.name


def test_adapt_needs_neither_sentence_transformers_nor_bm25s():
    """`lganna-rag adapt` runs on the core install: importing and running its parts loads no training extra."""
    code = ("import sys; import lganna_rag.adapt, lganna_rag.cli, lganna_rag.index, lganna_rag.objectives; "
            "bad = [m for m in ('sentence_transformers', 'bm25s', 'lganna_rag.training') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
