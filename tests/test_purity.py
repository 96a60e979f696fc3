"""The protocol core must stay sans-IO (DESIGN §1)."""

import ast
import pathlib

import electiond

PURE_MODULES = ["protocols", "detector.py", "node.py", "clockrate.py", "coord/replica.py", "coord/host.py"]
FORBIDDEN = {"socket", "asyncio", "time", "subprocess", "os", "select", "threading"}


def _pure_files():
    root = pathlib.Path(electiond.__file__).parent
    for entry in PURE_MODULES:
        path = root / entry
        yield from (sorted(path.rglob("*.py")) if path.is_dir() else [path])


def test_pure_core_imports_no_io():
    for path in _pure_files():
        tree = ast.parse(path.read_text(), str(path))
        for stmt in ast.walk(tree):
            names = []
            if isinstance(stmt, ast.Import):
                names = [a.name.split(".")[0] for a in stmt.names]
            elif isinstance(stmt, ast.ImportFrom) and stmt.module:
                names = [stmt.module.split(".")[0]]
            bad = FORBIDDEN.intersection(names)
            assert not bad, f"{path.name} imports {bad}"


def test_pure_core_uses_no_module_level_random():
    """`import random` is allowed for the type; calling random.random() etc. is not."""
    for path in _pure_files():
        tree = ast.parse(path.read_text(), str(path))
        for stmt in ast.walk(tree):
            if (
                isinstance(stmt, ast.Call)
                and isinstance(stmt.func, ast.Attribute)
                and isinstance(stmt.func.value, ast.Name)
                and stmt.func.value.id == "random"
                and stmt.func.attr != "Random"
            ):
                raise AssertionError(f"{path.name}:{stmt.lineno} calls random.{stmt.func.attr}")
