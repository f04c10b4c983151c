"""The package's layers, read from its import graph: training and synthesis never import evaluation, and the
scoring layer below them imports neither synthesis nor evaluation.

Every ``import`` and ``from ... import`` of every module counts, wherever it stands (module level, inside a
function, under ``if TYPE_CHECKING``), and so does everything it imports in turn.
"""

import ast
import sys
from collections import deque
from pathlib import Path
from typing import Optional

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "e2e_tts"
EVALUATION = ("e2e_tts.eval",)


def module_files() -> dict[str, Path]:
    """Dotted name -> source file of every module of the package (a package by its ``__init__.py``)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = module_files()


def imports_of(name: str) -> list[tuple[str, int]]:
    """The package's modules that module ``name`` imports, with the line of each import statement."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import sub" imports the module pkg.sub when there is one, else a name of pkg
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            # importing a.b.c runs a.b.c, a.b and a (listed in this order, so that a chain names a.b.c)
            parts = target.split(".")
            found += [(".".join(parts[:i]), node.lineno) for i in range(len(parts), 0, -1)
                      if ".".join(parts[:i]) in MODULES]
    return found


def forbidden_path(roots: list[str], forbidden: tuple[str, ...]) -> Optional[list[str]]:
    """The first import chain from a root to a module in (or under) ``forbidden``, as readable steps, or None."""
    def is_forbidden(module: str) -> bool:
        return any(module == f or module.startswith(f + ".") for f in forbidden)

    parent: dict[str, Optional[tuple[str, int]]] = {root: None for root in roots}
    queue = deque(roots)
    while queue:
        module = queue.popleft()
        if is_forbidden(module):
            chain = []
            while parent[module] is not None:
                importer, line = parent[module]
                chain.append(f"{importer} imports {module} ({MODULES[importer].relative_to(PACKAGE.parent)}:{line})")
                module = importer
            return chain[::-1]
        for target, line in imports_of(module):
            if target not in parent:
                parent[target] = (module, line)
                queue.append(target)
    return None


def under(*prefixes: str) -> list[str]:
    return sorted(m for m in MODULES if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_the_import_graph_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    source = tmp_path / "e2e_tts"
    (source / "low").mkdir(parents=True)
    (source / "__init__.py").write_text("")
    (source / "low" / "__init__.py").write_text("")
    (source / "low" / "a.py").write_text("def f():\n    from ..high import b\n")
    (source / "high.py").write_text("x = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", source)
    monkeypatch.setattr(sys.modules[__name__], "MODULES", module_files())
    assert ("e2e_tts.high", 2) in imports_of("e2e_tts.low.a")
    assert forbidden_path(["e2e_tts.low.a"], ("e2e_tts.high",)) == [
        "e2e_tts.low.a imports e2e_tts.high (e2e_tts/low/a.py:2)"]


@pytest.mark.parametrize("root", under("e2e_tts.models", "e2e_tts.objectives", "e2e_tts.system", "e2e_tts.synth",
                                       "e2e_tts.train"))
def test_training_and_synthesis_never_import_evaluation(root):
    chain = forbidden_path([root], EVALUATION)
    assert chain is None, "evaluation reached from " + root + ": " + " -> ".join(chain)


@pytest.mark.parametrize("root", under("e2e_tts.scoring"))
def test_the_scoring_layer_imports_neither_synthesis_nor_evaluation(root):
    above = EVALUATION + ("e2e_tts.synth", "e2e_tts.synth_cli", "e2e_tts.best_of_n", "e2e_tts.objectives",
                          "e2e_tts.train")
    chain = forbidden_path([root], above)
    assert chain is None, "a layer above scoring reached from " + root + ": " + " -> ".join(chain)
