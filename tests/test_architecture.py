"""The package's shape: imports run one way (helpers below, the trainer on top), no cycles, no oversized module.

Every module sits in a layer; a module may import only modules of lower layers. A new module must be given a layer
here, which is the moment to decide what it may depend on.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trl_masked_sft"

#: Lowest first. Modules of one layer never import each other. A subpackage's modules are named with a dot
#: (`chat.labels`); the subpackage itself (`chat`, its `__init__.py`) sits above them, since importing any of its
#: modules from outside runs its `__init__.py` first.
LAYERS: list[set[str]] = [
    {"errors", "tiny", "hints", "text", "provenance"},
    {"policies", "logs", "cli.errors"},
    {"precision", "config_checks", "memory"},
    {"config", "masking", "hf_compat", "chat.conversations"},
    {"batch_checks", "chat.end_of_turn", "checkpoints", "model_checks", "packing", "loss", "options"},
    {"weights", "layout"},
    {"report", "distributed", "collator", "metrics", "chat.controls", "context", "row_checks"},
    {"formats", "run_checks", "streaming", "chat.labels"},
    {"text_rows", "chat"},
    {"pipeline", "stops", "cli.sources"},
    {"audit", "inspector"},
    {"trainer", "audit_html"},
    {"cli.main", "__init__"},
    {"cli"},
    {"__main__", "cli.__main__"},
]
MAX_LINES, MAX_TRAINER_LINES = 400, 300
MODULES = sorted(PACKAGE.rglob("*.py"))


def _layer_of(module: str) -> int:
    for level, names in enumerate(LAYERS):
        if module in names:
            return level
    raise AssertionError(f"trl_masked_sft module `{module}` has no layer in tests/test_architecture.py: give it one.")


def _name(path: Path) -> str:
    """`chat.labels` for `chat/labels.py`, `chat` for `chat/__init__.py`, `__init__` for the package root's."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _imports(path: Path) -> set[str]:
    """The package modules `path` imports, at module level or inside functions; importing `chat.labels` from
    outside `chat/` imports `chat` (its `__init__.py`) too."""
    here = path.relative_to(PACKAGE).parent.parts  # the (sub)package `path` is in
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - node.level + 1]
            if node.module:
                found.add(".".join([*base, node.module]))
            else:
                found.update(".".join([*base, alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trl_masked_sft."):
            found.add(node.module.split(".", 1)[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("trl_masked_sft."))
    module = _name(path)
    parents = {n.split(".")[0] for n in found if "." in n and module.split(".")[0] != n.split(".")[0]}
    return (found | parents) - {module}


GRAPH = {_name(path): _imports(path) for path in MODULES}


def test_the_readme_table_of_where_things_live_names_modules_that_exist():
    """Each `x.py` or `chat/x.py` in README's "Where things live" is a file of the package: a rename updates it."""
    readme = (PACKAGE.parent / "README.md").read_text()
    table = readme.split("### Where things live", 1)[1].split("\n\n", 2)[1]
    named = set(re.findall(r"`([a-z_]+(?:/[a-z_]+)?\.py)`", table))
    assert len(named) > 10 and sorted(n for n in named if not (PACKAGE / n).exists()) == []


def test_every_layer_name_is_a_module():
    """A module renamed or removed leaves no stale name in `LAYERS`."""
    assert sorted(set().union(*LAYERS) - set(GRAPH)) == []


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_each_module_imports_only_lower_layers(module):
    """No upward or sideways import: a helper never imports the trainer, the pipeline never imports the CLI."""
    upward = sorted(m for m in GRAPH[module] if _layer_of(m) >= _layer_of(module))
    assert not upward, f"{module} imports {upward}, which are not below it (tests/test_architecture.py LAYERS)"


def test_only_the_package_root_and_the_cli_import_the_trainer():
    """Everything else prepares, checks or reports without a trainer."""
    assert sorted(m for m, deps in GRAPH.items() if "trainer" in deps) == ["__init__", "cli.main"]


def test_the_import_graph_has_no_cycle():
    """A depth-first walk finds no module that reaches itself."""
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(GRAPH.get(module, ())):
            if state.get(dep) == "open":
                raise AssertionError(f"import cycle: {' -> '.join([*trail, module, dep])}")
            if dep not in state:
                visit(dep, [*trail, module])
        state[module] = "done"

    for module in GRAPH:
        if module not in state:
            visit(module, [])


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_its_size(path):
    """At most 400 lines a module, 300 for the trainer: sizes that show the design."""
    limit = MAX_TRAINER_LINES if path.stem == "trainer" else MAX_LINES
    lines = len(path.read_text().splitlines())
    assert lines <= limit, f"{path.relative_to(PACKAGE)} has {lines} lines (limit {limit})"


def test_nothing_builds_a_trainer_without_its_constructor():
    """No `__new__` tricks: preparing data needs no trainer at all."""
    offenders = [p.name for p in MODULES if "__new__(" in p.read_text()]
    assert offenders == []


def test_the_ignore_index_is_defined_once():
    """`masking.IGNORE_INDEX` is the one -100 in code: no module assigns or compares with its own."""
    offenders = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            is_minus_100 = (
                isinstance(node, ast.UnaryOp)
                and isinstance(node.op, ast.USub)
                and isinstance(node.operand, ast.Constant)
                and node.operand.value == 100
            )
            if is_minus_100 and not (path.stem == "masking" and node.lineno == _line_of_ignore_index()):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == [], f"-100 written outside `masking.IGNORE_INDEX`: {offenders}"


def _line_of_ignore_index() -> int:
    source = (PACKAGE / "masking.py").read_text().splitlines()
    return next(i for i, line in enumerate(source, 1) if line.startswith("IGNORE_INDEX = "))
