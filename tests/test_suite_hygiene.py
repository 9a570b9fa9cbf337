"""The test suite itself: no test can hang on a child process, and Ray never starts in the pytest process."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = sorted(Path(__file__).resolve().parent.glob("*.py"))


def _calls(tree: ast.AST, module: str, name: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == name
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == module
    ]


def test_every_subprocess_run_has_a_timeout():
    missing = [
        f"{path.name}:{call.lineno}"
        for path in TESTS
        for call in _calls(ast.parse(path.read_text()), "subprocess", "run")
        if not any(k.arg == "timeout" for k in call.keywords)
    ]
    assert missing == []


def test_ray_starts_only_in_functions_run_in_a_child_process():
    """``ray.init`` appears only inside a function that the same file hands to ``run_driver("module:function")``."""
    offending = []
    for path in TESTS:
        text = path.read_text()
        driven = set(re.findall(r'run_driver\(\s*"[\w.]+:(\w+)"', text))
        for func in ast.walk(ast.parse(text)):
            if isinstance(func, ast.FunctionDef) and _calls(func, "ray", "init") and func.name not in driven:
                offending.append(f"{path.name}:{func.name}")
    assert offending == []
