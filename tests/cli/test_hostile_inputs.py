"""Hostile text arguments of `m alora predict`: refused with a clear message before any model loads."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from validora.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["fine", "   "], "Text argument 2 is empty"),
        ([""], "Text argument 1 is empty"),
        (["\u200b"], "Text argument 1 is blank (only invisible characters)"),
        (["fine", "\u2800\u3164"], "Text argument 2 is blank"),
        (["\u115f\u1160\uffa0\u00ad\u0301\u3000"], "Text argument 1 is blank"),
        (["bad \udcff byte"], "Text argument 1 is not valid UTF-8"),
        (["fine", "--requirement", "must be \ud800"], "--requirement is not valid UTF-8"),
    ],
)
def test_empty_and_non_utf8_text_arguments_are_refused(tmp_path, args, said):
    result = runner.invoke(app, ["alora", "predict", str(tmp_path / "no-adapter-needed"), *args])
    assert result.exit_code == 2, result.output
    assert said in result.stderr and "Traceback" not in result.output


def test_eval_warns_how_many_texts_were_cut_to_max_length(trained_adapter, tmp_path):
    import json

    data = tmp_path / "eval.jsonl"
    rows = [
        {"item": "rod knock " * 1200, "label": "connecting_rod"},
        {"item": "runs fine", "label": "no_failure"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = runner.invoke(
        app, ["alora", "eval", str(trained_adapter), str(data), "--device", "cpu", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert "1 of 2 text(s) were longer than --max-length" in result.stderr
    assert json.loads(result.stdout)["accuracy"] >= 0  # stdout stays JSON
