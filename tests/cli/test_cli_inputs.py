"""How `predict`/`eval` read their inputs: file formats, stdin, batch sizes, hub revisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from validora.backends.validator import Validator
from validora.cli import app
from validora.core.data import load_texts
from validora.errors import ConfigError, DataError

from ..fake_hub import USER

REQ = "Must be 'connecting_rod'."
JSONL = json.dumps({"item": "rod knock", "requirement": REQ}) + '\n\n{"item": "blue smoke"}\r\n'


def texts(examples) -> list[tuple[str, str | None]]:
    return [(e.item, e.requirement) for e in examples]


def test_jsonl_suffix_is_case_insensitive_and_other_files_are_plain_text(tmp_path: Path):
    want = [("rod knock", REQ), ("blue smoke", None)]
    for name in ("a.jsonl", "b.JSONL", "c.JsonL"):
        (tmp_path / name).write_text(JSONL, encoding="utf-8")
        assert texts(load_texts(tmp_path / name)) == want, name
    (tmp_path / "d.txt").write_text(JSONL, encoding="utf-8")
    as_text = [line for line in JSONL.replace("\r", "").split("\n") if line]
    assert texts(load_texts(tmp_path / "d.txt")) == [(line, None) for line in as_text]
    assert texts(load_texts(tmp_path / "d.txt", fmt="jsonl")) == want


def test_stdin_is_jsonl_only_when_every_line_is_an_item_object():
    want = [("rod knock", REQ), ("blue smoke", None)]
    assert texts(load_texts("-", JSONL.encode())) == want
    plain = b"blue smoke\n{not json}\n[1]\n"
    assert [t for t, _ in texts(load_texts("-", plain))] == ["blue smoke", "{not json}", "[1]"]
    assert [t for t, _ in texts(load_texts("-", JSONL.encode(), fmt="text"))][1] == '{"item": "blue smoke"}'
    with pytest.raises(DataError, match=r"<stdin> mixes JSONL lines \(for example line 2\)"):
        load_texts("-", b'plain\n{"item": "x"}\n')
    assert load_texts("-", b"\n \n") == []


def test_undecodable_text_names_the_file_and_every_bad_line(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_bytes("ok\nd\xe9marrage\nfine\n\xff\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        load_texts(path)
    assert [p.line for p in err.value.problems] == [2, 4]
    assert f"{path}:2: not valid UTF-8" in str(err.value)
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbffirst\n")
    assert load_texts(bom)[0].item == "first"  # a BOM is not part of the text


def test_cli_error_messages_show_the_option_they_begin_with_as_its_flag(tmp_path: Path):
    from validora.cli.display import error_message
    from validora.errors import HubError

    with pytest.raises(DataError) as err:
        load_texts(tmp_path / "unused.txt", fmt="xml")
    assert str(err.value) == "fmt must be one of auto, jsonl, text, not 'xml'." and err.value.option == "fmt"
    assert error_message(err.value) == "--format must be one of auto, jsonl, text, not 'xml'."
    assert error_message(ConfigError("rank must be at least 1, not 0.", option="rank")) == (
        "--rank must be at least 1, not 0."
    )
    assert error_message(HubError("repo_id 'a b' must be ORG/NAME.", option="repo_id")).startswith(
        "--name 'a b'"
    )
    # Only the leading option word changes: a path or value that spells it is left alone.
    odd = ConfigError("promptfile promptfile does not exist.", option="promptfile")
    assert error_message(odd) == "--promptfile promptfile does not exist."
    lines = DataError("max_length 20 leaves no room.", [], option="max_length")
    assert error_message(lines) == "--max-length 20 leaves no room."
    assert error_message(ConfigError("2 texts but 1 requirements.")) == "2 texts but 1 requirements."


def test_validator_refuses_batch_sizes_below_one():
    validator = Validator(model=None, adapter=None)  # refused before any use
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match=r"^batch_size must be a whole number of at least 1"):
            validator.predict(["x"], batch_size=bad)
        with pytest.raises(ConfigError, match=r"^batch_size"):
            validator.evaluate(["x"], ["a"], batch_size=bad)
    with pytest.raises(ConfigError, match="2 texts but 1 requirements"):
        validator.predict(["x", "y"], requirements=["r"])


def test_predict_reads_jsonl_from_stdin_and_upper_case_suffix(trained_adapter: Path, tmp_path: Path):
    runner = CliRunner()
    upper = tmp_path / "notes.JSONL"
    upper.write_text(JSONL, encoding="utf-8")
    from_file = runner.invoke(
        app, ["alora", "predict", str(trained_adapter), "--file", str(upper), "--jsonl"]
    )
    from_stdin = runner.invoke(
        app, ["alora", "predict", str(trained_adapter), "--file", "-", "--jsonl"], input=JSONL
    )
    for result in (from_file, from_stdin):
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert [r["item"] for r in rows] == ["rod knock", "blue smoke"]
    direct = runner.invoke(
        app,
        ["alora", "predict", str(trained_adapter), "rod knock", "--jsonl", "--requirement", REQ],
    )
    want = json.loads(direct.stdout)["probs"]
    for result in (from_file, from_stdin):
        assert json.loads(result.stdout.splitlines()[0])["probs"] == pytest.approx(want, abs=1e-5)


def test_predict_and_eval_take_a_hub_revision(hub, trained_adapter: Path, tmp_path: Path):
    runner = CliRunner()
    repo = f"{USER}/revisions"
    up = runner.invoke(app, ["alora", "upload", str(trained_adapter), "--name", repo, "--revision", "v2"])
    assert up.exit_code == 0, up.output
    got = runner.invoke(
        app, ["alora", "predict", repo, "rod knock", "--revision", "v2", "--device", "cpu", "--jsonl"]
    )
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["item"] == "rod knock"
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"item": "rod knock", "label": "connecting_rod"}) + "\n", encoding="utf-8")
    ev = runner.invoke(
        app, ["alora", "eval", repo, str(data), "--revision", "v2", "--device", "cpu", "--json"]
    )
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)["n"] == 1
    missing = runner.invoke(app, ["alora", "predict", repo, "x", "--revision", "nope"])
    assert missing.exit_code != 0 and "nope" in missing.output and "Traceback" not in missing.output
