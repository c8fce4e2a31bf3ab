"""Imports point one way (DESIGN §2): interface → programs → engines → adapters → foundations."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "validora"
LAYER = {
    "cli": 4,
    "session": 3, "context": 3, "requirements": 3, "sampling": 3,
    "backends": 2, "training": 2, "publish": 2, "batch": 2, "serve": 2,
    "adapters": 1, "ioyaml": 1, "scoring": 1, "checks": 1, "validator": 1, "reports": 1, "prefix_store": 1, "recipe": 1,
    "export": 1, "llamacpp": 1, "lexical": 1, "importing": 1, "distributed": 1, "resume": 1, "train_report": 1,
    "metrics": 0, "calibration": 0,
    "data": 0, "prompting": 0, "models": 0, "hub": 0, "errors": 0, "layouts": 0, "names": 0, "attention": 0,
    "packing": 0,
}  # fmt: skip
SIBLINGS = {("training", "backends"), ("backends", "training")}


def module_of(path: Path) -> str:
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def test_imports_point_down_only():
    problems = []
    for path in SRC.rglob("*.py"):
        here = module_of(path)
        if here == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("validora."):
                there = node.module.split(".")[1]
                if there == here or there not in LAYER:
                    continue
                if LAYER[there] > LAYER[here] or (here, there) in SIBLINGS:
                    problems.append(f"{path.relative_to(SRC)} imports {node.module}")
    assert not problems, problems


def test_every_module_is_placed_and_short():
    for path in SRC.rglob("*.py"):
        name = module_of(path)
        assert name in LAYER or name == "__init__", f"{name} has no layer"
        assert len(path.read_text().splitlines()) < 500, f"{path} is over 500 lines"
