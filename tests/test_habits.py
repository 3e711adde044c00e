"""Habits the linters do not check: a function in the package fits on a screen (about 80
lines, its docstring included), or it is named below with the reason it reads better whole,
and its docstring says that reason too (STYLE.md)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ("harness", "sim", "loadtests", "vecmig")
SCREEN = 80
WHOLE = {
    "loadtests/command.py register": "one flat list of argparse options in --help's order",
}
"""Functions longer than a screen on purpose: where they are, and why."""


Function = ast.FunctionDef | ast.AsyncFunctionDef


def functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, Function]]:
    """Every function and method in `tree`, nested ones too, with its qualified name."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, Function):
            yield prefix + node.name, node
            yield from functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from functions(node, f"{prefix}{node.name}.")
        else:
            yield from functions(node, prefix)


def longer_than_a_screen() -> dict[str, int]:
    """'path name' -> lines, of every function in the package longer than `SCREEN`."""
    long = {}
    for folder in PACKAGE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name, node in functions(ast.parse(path.read_text())):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > SCREEN:
                    long[f"{path.relative_to(ROOT)} {name}"] = lines
    return long


def test_a_function_longer_than_a_screen_is_one_that_reads_better_whole() -> None:
    unexplained = {where: n for where, n in longer_than_a_screen().items() if where not in WHOLE}
    assert not unexplained, (
        f"longer than {SCREEN} lines: {unexplained}; split each into well-named parts, or, if it "
        "reads better whole, say why in its docstring and add it to WHOLE in this test"
    )


def test_every_function_kept_whole_is_still_long_and_says_why() -> None:
    long = longer_than_a_screen()
    for where in WHOLE:
        assert where in long, f"{where} is no longer than a screen now: drop it from WHOLE"
        path, _, name = where.partition(" ")
        tree = ast.parse((ROOT / path).read_text())
        node = dict(functions(tree))[name]
        assert ast.get_docstring(node), f"{where} is kept whole; its docstring must say why"
