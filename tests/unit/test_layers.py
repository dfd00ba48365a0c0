"""The layer rules of ARCHITECTURE.md, read from the imports (AST) of `pipelines/` and `serve/`.

Every import counts: top-level ones and deferred ones inside functions. Imports under
`if TYPE_CHECKING:` never run; they count as typing-only, allowed only where a rule says so.
An import cycle is checked between the stages of `pipelines` (its subpackages and top
modules) on the imports that run when a module is imported (top level, not typing-only).
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "serve")
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class Import:
    """One import statement: `import a.b` names `a.b`, `from a import b, c` names `a.b` and `a.c`."""

    module: str  # the importing module, dotted
    path: Path  # its file, relative to the tree's root
    line: int
    names: tuple[str, ...]  # what it imports, absolute and dotted
    top_level: bool  # runs when the module is imported (not inside a function)
    typing_only: bool  # under `if TYPE_CHECKING:`


@dataclass(frozen=True)
class Violation:
    rule: str
    path: Path
    line: int
    module: str
    names: tuple[str, ...]
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.module} imports {', '.join(self.names)} [{self.rule}: {self.why}]"


@dataclass(frozen=True)
class Rule:
    """Modules under `importers` (but not `exempt`) may not import `forbidden` names, except
    the `allowed` ones, and the `typing_allowed` ones under TYPE_CHECKING."""

    name: str
    why: str
    importers: tuple[str, ...]
    forbidden: tuple[str, ...]
    allowed: tuple[str, ...] = ()
    typing_allowed: tuple[str, ...] = ()
    exempt: tuple[str, ...] = ()


def under(name: str, prefixes: Iterable[str]) -> bool:
    """`name` is one of `prefixes` or inside one (`ray.serve` is under `ray`, not `serve`)."""
    return any(name == prefix or name.startswith(f"{prefix}.") for prefix in prefixes)


def module_name(path: Path) -> str:
    """`pipelines/contract/text.py` → `pipelines.contract.text`; a package's `__init__.py` → the package."""
    parts = path.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(
    node: ast.AST, top_level: bool = True, typing_only: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import statement under `node`, with whether it is top-level and typing-only."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, top_level, typing_only
        return
    if isinstance(node, ast.If) and is_type_checking(node.test):
        for body, typed in ((node.body, True), (node.orelse, typing_only)):
            for statement in body:
                yield from import_nodes(statement, top_level, typed)
        return
    inner = top_level and not isinstance(node, FUNCTIONS)
    for child in ast.iter_child_nodes(node):
        yield from import_nodes(child, inner, typing_only)


def imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> tuple[str, ...]:
    """Absolute dotted names of one statement; relative imports resolve against `module`."""
    if isinstance(node, ast.Import):
        return tuple(alias.name for alias in node.names)
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    return tuple(base if alias.name == "*" else f"{base}.{alias.name}" for alias in node.names)


def read_imports(root: Path, path: Path) -> list[Import]:
    """The imports of one module file under `root`."""
    relative = path.relative_to(root)
    module, is_package = module_name(relative), path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        Import(
            module, relative, node.lineno, imported_names(node, module, is_package), top_level, typing_only
        )
        for node, top_level, typing_only in import_nodes(tree)
    ]


def collect(root: Path) -> list[Import]:
    return [
        found
        for package in PACKAGES
        for path in sorted((root / package).rglob("*.py"))
        for found in read_imports(root, path)
    ]


def rule_violations(rule: Rule, imports: Iterable[Import]) -> list[Violation]:
    violations = []
    for found in imports:
        if not under(found.module, rule.importers) or under(found.module, rule.exempt):
            continue
        names = tuple(
            name
            for name in found.names
            if under(name, rule.forbidden)
            and not under(name, rule.allowed)
            and not (found.typing_only and under(name, rule.typing_allowed))
        )
        if names:
            violations.append(Violation(rule.name, found.path, found.line, found.module, names, rule.why))
    return violations


def stage(name: str) -> str | None:
    """The stage of `pipelines` a name belongs to: `pipelines.data.window.X` → `pipelines.data`."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "pipelines" and len(parts) > 1 else None


def stage_targets(found: Import) -> dict[str, str]:
    """The other stages one statement imports: imported name → its stage."""
    source = stage(found.module)
    targets = {name: stage(name) for name in found.names}
    return {name: target for name, target in targets.items() if source and target and target != source}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), set()) - seen:
            seen.add(target)
            todo.append(target)
    return seen


def cycle_violations(imports: Iterable[Import]) -> list[Violation]:
    """Import-time imports of another stage that (directly or not) imports the importer's stage back."""
    at_import = [found for found in imports if found.top_level and not found.typing_only]
    graph: dict[str, set[str]] = {}
    for found in at_import:
        graph.setdefault(str(stage(found.module)), set()).update(stage_targets(found).values())
    violations = []
    for found in at_import:
        source = str(stage(found.module))
        back = {
            name: target
            for name, target in stage_targets(found).items()
            if source in reachable(graph, target)
        }
        if back:
            why = f"{', '.join(sorted(set(back.values())))} imports {source} back, directly or not"
            violations.append(
                Violation("import-cycle", found.path, found.line, found.module, tuple(back), why)
            )
    return violations


BARE = ("ray", "mlflow", "pydantic")
RULES = (
    Rule(
        "bare-compute",
        "contract/ and model/ import no ray, mlflow or pydantic",
        importers=("pipelines.contract", "pipelines.model"),
        forbidden=BARE,
    ),
    Rule(
        "contract-leaf",
        "contract/ imports only pipelines.errors and pipelines.contract from pipelines",
        importers=("pipelines.contract",),
        forbidden=("pipelines",),
        allowed=("pipelines.errors", "pipelines.contract"),
    ),
    Rule(
        "model-bare",
        "model/ imports only errors, contract and model from pipelines (config: under TYPE_CHECKING only)",
        importers=("pipelines.model",),
        forbidden=("pipelines",),
        allowed=("pipelines.errors", "pipelines.contract", "pipelines.model"),
        typing_allowed=("pipelines.config",),
    ),
    Rule(
        "mlflow-in-registry",
        "only pipelines/registry/ imports mlflow",
        importers=PACKAGES,
        forbidden=("mlflow",),
        exempt=("pipelines.registry",),
    ),
    Rule(
        "serve-from-cli",
        "in pipelines, only cli/ imports serve",
        importers=("pipelines",),
        forbidden=("serve",),
        exempt=("pipelines.cli",),
    ),
    Rule(
        "serve-surface",
        "serve/ imports only the public surface of pipelines",
        importers=("serve",),
        forbidden=("pipelines",),
        allowed=(
            "pipelines.config",
            "pipelines.errors",
            "pipelines.predict",
            "pipelines.registry",
            "pipelines.contract",
            "pipelines.data.feedback",
            "pipelines.faults",
        ),
    ),
)


def check(imports: list[Import]) -> list[Violation]:
    return [violation for rule in RULES for violation in rule_violations(rule, imports)]


def failure(violations: list[Violation]) -> str:
    return f"{len(violations)} import(s) break the layer rules:\n" + "\n".join(map(str, violations))


def write_tree(root: Path, modules: dict[str, str]) -> None:
    for name, source in modules.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip("\n"), encoding="utf-8")


SYNTHETIC = {
    "pipelines/__init__.py": "",
    "pipelines/contract/rows.py": """
        import ray
        from typing import TYPE_CHECKING
        from . import columns
        if TYPE_CHECKING:
            from pipelines.config import DataConfig
    """,
    "pipelines/evaluation/job.py": """
        import pandas as pd


        def log_run() -> None:
            import mlflow.tracking
    """,
    "pipelines/model/inference.py": """
        from typing import TYPE_CHECKING
        from ..contract.rows import check
        if TYPE_CHECKING:
            from pipelines.config import OncallConfig
            from ..registry.versions import Registry
        else:
            import pydantic


        def load() -> None:
            from pipelines.config import load_config
    """,
    "pipelines/registry/versions.py": "from mlflow import MlflowClient\n",
    "pipelines/jobs/schedule.py": "from ray import serve\nimport serve.app\n",
    "pipelines/cli/__init__.py": "from serve import app\n",
    "serve/app.py": """
        from pipelines import predict
        from pipelines.data.feedback import FeedbackStore
        from pipelines.model.inference import TicketClassifier
        from pipelines.data import feedback, window
    """,
}


def found(violations: list[Violation]) -> set[tuple[str, str, int, tuple[str, ...]]]:
    return {(v.rule, str(v.path), v.line, v.names) for v in violations}


def test_checker_reports_each_forbidden_import_with_its_file_and_line(tmp_path: Path) -> None:
    write_tree(tmp_path, SYNTHETIC)
    assert found(check(collect(tmp_path)) + cycle_violations(collect(tmp_path))) == {
        ("bare-compute", "pipelines/contract/rows.py", 1, ("ray",)),
        ("contract-leaf", "pipelines/contract/rows.py", 5, ("pipelines.config.DataConfig",)),
        ("mlflow-in-registry", "pipelines/evaluation/job.py", 5, ("mlflow.tracking",)),
        ("model-bare", "pipelines/model/inference.py", 5, ("pipelines.registry.versions.Registry",)),
        ("bare-compute", "pipelines/model/inference.py", 7, ("pydantic",)),
        ("model-bare", "pipelines/model/inference.py", 11, ("pipelines.config.load_config",)),
        ("serve-from-cli", "pipelines/jobs/schedule.py", 2, ("serve.app",)),
        ("serve-surface", "serve/app.py", 3, ("pipelines.model.inference.TicketClassifier",)),
        ("serve-surface", "serve/app.py", 4, ("pipelines.data.window",)),
    }


def test_imports_are_read_with_their_scope_and_resolved_to_absolute_names(tmp_path: Path) -> None:
    write_tree(tmp_path, SYNTHETIC)
    read = read_imports(tmp_path, tmp_path / "pipelines/model/inference.py")
    assert [(i.line, i.names, i.top_level, i.typing_only) for i in read] == [
        (1, ("typing.TYPE_CHECKING",), True, False),
        (2, ("pipelines.contract.rows.check",), True, False),
        (4, ("pipelines.config.OncallConfig",), True, True),
        (5, ("pipelines.registry.versions.Registry",), True, True),
        (7, ("pydantic",), True, False),
        (11, ("pipelines.config.load_config",), False, False),
    ]


def test_cycles_count_import_time_imports_only(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "pipelines/data/window.py": "from pipelines.training import loop\n",
            "pipelines/training/loop.py": "import pipelines.data.window\n",
            "pipelines/jobs/nightly.py": "from pipelines.inference import rescore\n",
            "pipelines/inference/rescore.py": "def run() -> None:\n    from pipelines.jobs import nightly\n",
        },
    )
    assert found(cycle_violations(collect(tmp_path))) == {
        ("import-cycle", "pipelines/data/window.py", 1, ("pipelines.training.loop",)),
        ("import-cycle", "pipelines/training/loop.py", 1, ("pipelines.data.window",)),
    }


def test_pipelines_and_serve_keep_the_layer_rules() -> None:
    violations = check(collect(REPO))
    if violations:
        pytest.fail(failure(violations))


def test_the_stages_of_pipelines_import_each_other_without_cycles() -> None:
    violations = cycle_violations(collect(REPO))
    if violations:
        pytest.fail(failure(violations))
