"""Imports point one way (DESIGN §2), checked on every import, those inside functions included:

cli → programs → {train ∥ backends} → {score ∥ llamacpp} → adapter → core → errors
"""

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "validora"
LAYER = {
    "cli": 6,
    "programs": 5,
    "train": 4, "backends": 4,
    "score": 3, "llamacpp": 3,
    "adapter": 2,
    "core": 1,
    "errors": 0,
}  # fmt: skip
FLAG = re.compile(r"--[A-Za-z]")


def dotted(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every validora module this file imports, wherever the import statement sits."""
    found = []
    here = dotted(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = here.split(".")[: -node.level] if path.name != "__init__.py" else here.split(".")
                base = base[: len(base) - node.level + 1] if path.name == "__init__.py" else base
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if not module.startswith("validora"):
                continue
            for alias in node.names:  # `from validora.score import scoring` imports the module scoring
                candidate = f"{module}.{alias.name}"
                if (SRC.parent / candidate.replace(".", "/")).with_suffix(".py").exists():
                    found.append((node.lineno, candidate))
                else:
                    found.append((node.lineno, module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("validora")]
    return found


def root_names(path: Path) -> set[tuple[int, str]]:
    """(line, name) of every `from validora import name` in this file."""
    return {
        (node.lineno, alias.name)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module == "validora" and not node.level
        for alias in node.names
    }


def modules() -> dict[str, Path]:
    return {dotted(p): p for p in SRC.rglob("*.py")}


def test_every_module_sits_in_a_layer_package():
    for name in modules():
        package = package_of(name)
        assert package is None or package in LAYER or package == "__main__", f"{name} is in no layer"
        assert name.count(".") <= 2 or package in LAYER, name
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert top == ["__init__.py", "errors.py"], f"modules beside the layers: {top}"


def test_imports_point_down_only_and_siblings_never_meet():
    problems = []
    for name, path in modules().items():
        here = package_of(name)
        if here is None:  # validora/__init__.py: the lazy public names
            continue
        for line, module in imports_of(path):
            there = package_of(module)
            if there is None:
                if module == "validora" and (line, "__version__") in root_names(path):
                    continue  # the version only: every public name of the root lives in a layer
                problems.append(f"{path.relative_to(SRC)}:{line} imports {module}")
                continue
            if there == here:
                continue
            if LAYER[there] >= LAYER[here]:
                problems.append(f"{path.relative_to(SRC)}:{line} ({here}) imports {module} ({there})")
    assert not problems, "\n".join(problems)


def test_no_import_cycle():
    graph: dict[str, set[str]] = {}
    known = modules()
    for name, path in known.items():
        graph[name] = {m for _, m in imports_of(path) if m in known and m != name and m != "validora"}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_the_layer_check_sees_imports_inside_functions_and_through_the_root():
    probe = SRC / "core" / "_probe_for_test.py"
    for source in (
        "def f():\n    from validora.score.scoring import LabelScores\n",
        "from validora import Session\n",
    ):
        probe.write_text(source)
        try:
            with pytest.raises(AssertionError, match="_probe_for_test"):
                test_imports_point_down_only_and_siblings_never_meet()
        finally:
            probe.unlink()


def test_library_messages_name_options_never_flags():
    """Library raises, warnings and logs name options (`option=`); only cli/ spells them as flags."""
    problems = []
    for name, path in modules().items():
        if package_of(name) == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                texts = [
                    n for n in ast.walk(node.exc) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                ]
            elif isinstance(node, ast.Call) and _is_message_call(node):
                texts = [n for a in node.args for n in ast.walk(a) if isinstance(n, ast.Constant)]
            else:
                continue
            problems += [
                f"{path.relative_to(SRC)}:{t.lineno}: {t.value!r}"
                for t in texts
                if isinstance(t.value, str) and FLAG.search(t.value)
            ]
    assert not problems, "\n".join(problems)


def _is_message_call(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in {"warn", "warning", "info", "error", "debug", "exception", "critical", "log", "say"}


def test_no_print_or_exit_outside_the_cli():
    problems = []
    for name, path in modules().items():
        if package_of(name) == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in {"print", "exit"}:
                    problems.append(f"{path.relative_to(SRC)}:{node.lineno} {func.id}()")
                if (
                    isinstance(func, ast.Attribute)
                    and func.attr == "exit"
                    and getattr(func.value, "id", "") == "sys"
                ):
                    problems.append(f"{path.relative_to(SRC)}:{node.lineno} sys.exit()")
    assert not problems, "\n".join(problems)


def test_every_module_is_short():
    for path in SRC.rglob("*.py"):
        assert len(path.read_text().splitlines()) < 500, f"{path} is over 500 lines"
