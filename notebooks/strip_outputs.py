"""Strip outputs, execution counts and run metadata from notebooks, in place.

    python notebooks/strip_outputs.py            # every notebook in notebooks/
    python notebooks/strip_outputs.py A.ipynb …  # the given ones
    python notebooks/strip_outputs.py --check    # exit 1 if any notebook is not stripped

Notebooks are committed stripped (a test checks it): run this (or `make strip-notebooks`) after
running a notebook in Jupyter.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parent
# Notebook metadata worth keeping; the rest (language_info, widgets, …) is written by a run.
KEPT_METADATA = ("kernelspec",)


def strip(notebook: nbformat.NotebookNode) -> bool:
    """Strip ``notebook`` in place; True if anything changed."""
    changed = False
    for cell in notebook.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count = [], None
            changed = True
        for key in ("execution", "collapsed", "scrolled"):  # written by nbclient / Jupyter
            if key in cell.metadata:
                del cell.metadata[key]
                changed = True
    for key in [key for key in notebook.metadata if key not in KEPT_METADATA]:
        del notebook.metadata[key]
        changed = True
    return changed


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [Path(arg) for arg in argv if arg != "--check"] or sorted(NOTEBOOKS.glob("*.ipynb"))
    unstripped = []
    for path in paths:
        notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        if not strip(notebook):
            continue
        unstripped.append(path)
        if not check:
            nbformat.write(notebook, path)
            print(f"stripped {path}")
    if check and unstripped:
        print("not stripped: " + ", ".join(map(str, unstripped)) + " (run python notebooks/strip_outputs.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
