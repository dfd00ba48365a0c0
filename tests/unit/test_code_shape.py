"""Functions stay short enough to read at a glance: at most MAX_LINES lines, unless the function
says why it is longer in a comment starting with ``# Long:``."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "serve")
MAX_LINES = 60
EXCUSE = "# Long:"


def long_functions(root: Path, max_lines: int = MAX_LINES) -> Iterator[str]:
    """``path:line name (N lines)`` of every function under ``root`` longer than ``max_lines``
    without an excuse comment."""
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = node.end_lineno - node.lineno + 1
            body = lines[node.lineno - 1 : node.end_lineno]
            if length > max_lines and not any(line.strip().startswith(EXCUSE) for line in body):
                yield f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({length} lines)"


def test_the_checker_finds_a_long_function_and_accepts_an_excused_one(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(5))
    (package / "a.py").write_text(f"def long_one():\n{body}\n\ndef short():\n    return 1\n")
    (package / "b.py").write_text(f"def excused():\n    {EXCUSE} a table of cases, one per line\n{body}")
    assert list(long_functions(package, max_lines=4)) == ["pkg/a.py:1 long_one (6 lines)"]


def test_no_function_in_the_product_is_too_long() -> None:
    found = [hit for package in PACKAGES for hit in long_functions(REPO / package)]
    assert not found, "split these into named steps (or say why with '# Long:'):\n" + "\n".join(found)
