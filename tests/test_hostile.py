"""Hostile inputs: malformed data files, text files, flags and adapter paths through the real CLI.

Each case must end in a clear message and the right exit status (2 for input errors), never a traceback,
and must write nothing. Every case fails before a base model is loaded, so the table runs in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from validora.cli import app

from .conftest import engine_rows

GOOD = [json.dumps(r) for r in engine_rows(3)]  # 4 labels x 3 examples


def lines(*rows: str) -> bytes:
    return "".join(row + "\n" for row in rows).encode("utf-8")


def obj(**fields: object) -> str:
    return json.dumps(fields)


@dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[Path], list[str]]  # the command line, given the folder holding the inputs
    expect: str  # a fragment of the message
    files: dict[str, bytes | None] | None = None  # inputs to create (None: a directory)
    stdin: bytes | None = None
    code: int = 2


def train(data: str, *extra: str) -> Callable[[Path], list[str]]:
    return lambda d: ["train", str(d / data), "--outfile", str(d / "adapter"), "--device", "cpu", *extra]


def predict(*extra: str) -> Callable[[Path], list[str]]:
    return lambda d: ["predict", str(d / "no-adapter-here"), *[e.format(d=d) for e in extra]]


def evaluate(data: str, *extra: str) -> Callable[[Path], list[str]]:
    return lambda d: ["eval", str(d / "no-adapter-here"), str(d / data), *[e.format(d=d) for e in extra]]


CASES = [
    # ---- training data files
    Case("bad-json", train("d.jsonl"), "d.jsonl:13: invalid JSON", {"d.jsonl": lines(*GOOD, '{"item": "x", ')}),
    Case("item-not-string", train("d.jsonl"), 'd.jsonl:1: field "item" must be a string, got int',
         {"d.jsonl": lines(obj(item=3, label="a"), *GOOD)}),
    Case("label-null", train("d.jsonl"), 'field "label" must be a string, got NoneType',
         {"d.jsonl": lines(*GOOD, obj(item="x", label=None))}),
    Case("item-object", train("d.jsonl"), 'field "item" must be a string, got dict',
         {"d.jsonl": lines(*GOOD, obj(item={"text": "x"}, label="a"))}),
    Case("requirement-list", train("d.jsonl"), 'field "requirement" must be a string, got list',
         {"d.jsonl": lines(*GOOD, obj(item="x", label="a", requirement=["r"]))}),
    Case("json-array", train("d.jsonl"), "expected a JSON object, got list", {"d.jsonl": lines(*GOOD, "[1, 2]")}),
    Case("empty-label", train("d.jsonl"), 'field "label" is empty', {"d.jsonl": lines(*GOOD, obj(item="x", label=" "))}),
    Case("bom", train("d.jsonl"), "d.jsonl:1: file starts with a UTF-8 byte-order mark", {"d.jsonl": b"\xef\xbb\xbf" + lines(*GOOD)}),
    Case("latin-1", train("d.jsonl"), "d.jsonl:13: not valid UTF-8",
         {"d.jsonl": lines(*GOOD) + '{"item": "piston à 3000 tr/min", "label": "piston_rings"}\n'.encode("latin-1")}),
    Case("utf-16", train("d.jsonl"), "not valid UTF-8", {"d.jsonl": "\n".join(GOOD).encode("utf-16")}),
    Case("binary", train("d.jsonl"), "bad line(s)", {"d.jsonl": bytes(range(256)) * 4}),
    Case("empty-file", train("d.jsonl"), "holds no examples", {"d.jsonl": b""}),
    Case("blank-lines", train("d.jsonl"), "holds no examples", {"d.jsonl": b"\n  \n\t\n"}),
    Case("one-label", train("d.jsonl"), "only one label", {"d.jsonl": lines(*[obj(item=f"n{i}", label="a") for i in range(9)])}),
    Case("label-with-one-example", train("d.jsonl"), "'lonely' has 1",
         {"d.jsonl": lines(*GOOD, obj(item="x", label="lonely"))}),
    Case("label-with-one-repeated-item", train("d.jsonl"), "repeated item counts once",
         {"d.jsonl": lines(*GOOD, *[obj(item="same", label="lonely")] * 5)}),
    Case("missing-data-file", train("nope.jsonl"), "Data file not found"),
    Case("data-file-is-a-directory", train("folder.jsonl"), "is a directory", {"folder.jsonl": None}),
    Case("val-fraction-0", train("d.jsonl", "--val-fraction", "0"), "--val-fraction", {"d.jsonl": lines(*GOOD)}),
    Case("val-fraction-1", train("d.jsonl", "--val-fraction", "1"), "--val-fraction", {"d.jsonl": lines(*GOOD)}),
    Case("missing-promptfile", lambda d: [*train("d.jsonl")(d), "--promptfile", str(d / "p.json")],
         "--promptfile", {"d.jsonl": lines(*GOOD)}),
    Case("promptfile-array", lambda d: [*train("d.jsonl")(d), "--promptfile", str(d / "p.json")],
         "invocation_prompt", {"d.jsonl": lines(*GOOD), "p.json": b"[]"}),
    Case("promptfile-latin-1", lambda d: [*train("d.jsonl")(d), "--promptfile", str(d / "p.json")],
         "--promptfile", {"d.jsonl": lines(*GOOD), "p.json": '{"invocation_prompt": "é"}'.encode("latin-1")}),
    Case("promptfile-is-a-directory", lambda d: [*train("d.jsonl")(d), "--promptfile", str(d / "p")],
         "is a directory", {"d.jsonl": lines(*GOOD), "p": None}),
    # ---- texts to classify
    Case("predict-latin-1-text", predict("--file", "{d}/notes.txt"), "notes.txt:2: not valid UTF-8",
         {"notes.txt": "fine\nd\xe9marrage difficile\n".encode("latin-1")}),
    Case("predict-latin-1-jsonl", predict("--file", "{d}/notes.JSONL"), "notes.JSONL:1: not valid UTF-8",
         {"notes.JSONL": '{"item": "d\xe9marrage"}\n'.encode("latin-1")}),
    Case("predict-latin-1-stdin", predict("--file", "-"), "<stdin>:1: not valid UTF-8", stdin="d\xe9marrage\n".encode("latin-1")),
    Case("predict-bad-jsonl", predict("--file", "{d}/notes.jsonl"), "notes.jsonl:2: invalid JSON",
         {"notes.jsonl": lines(obj(item="x"), "{oops")}),
    Case("predict-jsonl-without-item", predict("--file", "{d}/notes.jsonl"), 'notes.jsonl:1: missing field "item"',
         {"notes.jsonl": lines(obj(text="x"))}),
    Case("predict-stdin-mixed", predict("--file", "-"), "mixes JSONL lines", stdin=lines(obj(item="x"), "plain text")),
    Case("predict-stdin-forced-jsonl", predict("--file", "-", "--format", "jsonl"), "<stdin>:1: invalid JSON",
         stdin=b"plain text\n"),
    Case("predict-unknown-format", predict("--file", "-", "--format", "xml"), "--format must be one of", stdin=b"x\n"),
    Case("predict-missing-file", predict("--file", "{d}/nope.txt"), "does not exist"),
    Case("predict-file-is-a-directory", predict("--file", "{d}/folder"), "is a directory", {"folder": None}),
    Case("predict-empty-file", predict("--file", "{d}/empty.txt"), "Nothing to classify", {"empty.txt": b"\n\n"}),
    Case("predict-empty-jsonl", predict("--file", "{d}/empty.jsonl"), "holds no examples", {"empty.jsonl": b""}),
    Case("predict-batch-size-0", predict("x", "--batch-size", "0"), "Invalid value for '--batch-size'"),
    Case("predict-batch-size-negative", predict("x", "--batch-size", "-1"), "Invalid value for '--batch-size'"),
    Case("predict-batch-size-text", predict("x", "--batch-size", "two"), "Invalid value for '--batch-size'"),
    # ---- evaluation data
    Case("eval-missing-data", evaluate("nope.jsonl"), "Data file not found"),
    Case("eval-data-is-a-directory", evaluate("folder"), "is a directory", {"folder": None}),
    Case("eval-bom", evaluate("d.jsonl"), "byte-order mark", {"d.jsonl": b"\xef\xbb\xbf" + lines(*GOOD)}),
    Case("eval-unlabeled", evaluate("d.jsonl"), 'missing field "label"', {"d.jsonl": lines(obj(item="x"))}),
    Case("eval-batch-size-0", evaluate("d.jsonl", "--batch-size", "0"), "Invalid value for '--batch-size'", {"d.jsonl": lines(*GOOD)}),
    Case("eval-plot-is-a-directory", evaluate("d.jsonl", "--plot", "{d}/plots", "--overwrite"), "is a directory",
         {"d.jsonl": lines(*GOOD), "plots": None}),
    Case("eval-plot-parent-missing", evaluate("d.jsonl", "--plot", "{d}/nope/cm.png"), "does not exist",
         {"d.jsonl": lines(*GOOD)}),
    # ---- adapter paths (malformed validora.json is tested with the adapter format)
    Case("adapter-missing", predict("x"), "Adapter directory not found", code=1),
    Case("adapter-without-validora-json", lambda d: ["predict", str(d / "empty-adapter"), "x"],
         "not a validora adapter", {"empty-adapter": None}, code=1),
    Case("adapter-is-a-file", lambda d: ["eval", str(d / "a.txt"), str(d / "d.jsonl")], "Adapter directory not found",
         {"a.txt": b"hello", "d.jsonl": lines(*GOOD)}, code=1),
]  # fmt: skip


def tree(folder: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_cleanly(case: Case, tmp_path: Path):
    for name, content in (case.files or {}).items():
        if content is None:
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_bytes(content)
    before = tree(tmp_path)
    result = CliRunner().invoke(
        app, ["alora", *case.args(tmp_path)], input=case.stdin, env={"COLUMNS": "300"}
    )
    assert isinstance(result.exception, SystemExit), (result.exception, result.output)
    assert "Traceback" not in result.output
    assert result.exit_code == case.code, result.output
    assert case.expect in result.output
    assert tree(tmp_path) == before  # nothing written: no --outfile, no plot, no partial directory
