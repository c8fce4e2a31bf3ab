"""Files that leave the adapter (import, export, upload) under hostile input: links out of the adapter,
YAML alias bombs, broken model cards, truncated or foreign weights, deep or non-JSON configs, and
kills (SIGKILL between two renames, SIGTERM while staged). Each gives a clean error or recovers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from validora.adapter import ioyaml, publish
from validora.cli import app
from validora.errors import ConfigError

from ..conftest import LABELS, deadline
from ..fake_hub import USER

VALIDORA_FILES = ("validora.json", "metrics.json", "README.md", "lexical.safetensors")
LABEL_ARGS = ["--labels", ",".join(LABELS)]
RECURSIVE = "model: null\nresponse_format: &a [*a]\n"
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefghi", "bcdefghij", strict=True)
)  # 9**10 leaves once expanded
DEEP = "model: " + "[" * 5000 + "]" * 5000 + "\n"


def m(*args: object):
    return CliRunner().invoke(app, ["alora", *map(str, args)])


def said(result) -> str:
    return " ".join(result.output.split())


@pytest.fixture
def peft_dir(trained_adapter, tmp_path) -> Path:
    """The trained aLoRA as another tool leaves it: PEFT's two files, no validora.json."""
    source = tmp_path / "peft"
    source.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (source / name).write_bytes((trained_adapter / name).read_bytes())
    return source


def tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# (6) links out of the adapter


def test_import_refuses_a_link_out_of_the_adapter(peft_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("a private note")
    (peft_dir / "notes.md").symlink_to(secret)
    for where in (["--outfile", tmp_path / "out"], ["--overwrite"]):
        result = m("import", peft_dir, *LABEL_ARGS, *where)
        assert result.exit_code == 2, result.output
        assert f"notes.md -> {secret}" in said(result) and "outside it" in said(result)
        assert not (tmp_path / "out").exists() and not (peft_dir / "validora.json").exists()
    (peft_dir / "notes.md").unlink()
    (peft_dir / "notes.md").symlink_to("adapter_config.json")  # a link inside the adapter is a copy
    result = m("import", peft_dir, *LABEL_ARGS, "--outfile", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "out" / "notes.md").is_symlink()


def test_export_refuses_a_link_out_of_the_adapter(trained_adapter, tmp_path):
    adapter = Path(shutil.copytree(trained_adapter, tmp_path / "engine"))
    outside = tmp_path / "other.safetensors"
    (adapter / "adapter_model.safetensors").rename(outside)
    (adapter / "adapter_model.safetensors").symlink_to(outside)
    result = m("export", adapter, "--outfile", tmp_path / "a.gguf")
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    assert f"adapter_model.safetensors -> {outside}" in said(result)
    assert not (tmp_path / "a.gguf").exists()


# (6) what an upload says and refuses


def test_upload_warns_for_private_repositories_and_names_the_lexical_file(hub, trained_adapter, tmp_path):
    adapter = Path(shutil.copytree(trained_adapter, tmp_path / "engine"))
    assert (adapter / "lexical.safetensors").is_file()
    result = m("upload", adapter, "--name", f"{USER}/engine-private")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stderr.split())
    assert "private" in text and "lexical.safetensors" in text and "memorised" in text
    (adapter / "train.ndjson").write_text('{"item": "x"}\n')
    warning = publish.data_warning(adapter, private=False)
    assert "PUBLIC" in warning and "lexical.safetensors, train.ndjson" in warning


def test_data_and_pickle_checks_cover_more_suffixes(tmp_path):
    refused = {
        "rows.json": "data", "rows.ndjson": "data", "notes.txt": "data", "corpus.tar": "data",
        "corpus.tar.gz": "data", "corpus.zip": "data", "train.jsonl": "data",
        "model.joblib": "pickle", "emb.npy": "pickle", "emb.npz": "pickle", "clf.pkl": "pickle",
        "w.pt": "pickle", "w.pth": "pickle", "w.bin": "pickle", "w.ckpt": "pickle",
    }  # fmt: skip
    kept = ["adapter_config.json", "validora.json", "metrics.json", "tokenizer.json", "merges.txt", "io.yaml"]
    for name in [*refused, *kept]:
        (tmp_path / name).write_text("{}")
    pickles, data = publish.refused_files(tmp_path, allow_data=False)
    got = {line.split(" ")[0]: "pickle" for line in pickles} | {line.split(" ")[0]: "data" for line in data}
    assert got == refused
    assert publish.refused_files(tmp_path, allow_data=True)[1] == []


# YAML anchors and aliases, nesting, size


@pytest.mark.parametrize("text", [RECURSIVE, LAUGHS, DEEP], ids=["recursive", "billion-laughs", "deep"])
def test_io_yaml_aliases_and_deep_nesting_are_refused_at_once(tmp_path, text):
    path = tmp_path / "io.yaml"
    path.write_text(text)
    with deadline(20):
        for read in (ioyaml.labels_from, lambda p: ioyaml.validate(p, LABELS)):
            with pytest.raises(ConfigError, match=r"anchors and aliases|nested deeper than 64"):
                read(path)


def test_io_yaml_size_is_capped(tmp_path):
    path = tmp_path / "io.yaml"
    path.write_text("model: null\n" + "# padding\n" * 120_000)
    with pytest.raises(ConfigError, match=r"an io\.yaml is a few lines"):
        ioyaml.labels_from(path)


def test_import_and_upload_refuse_an_alias_bomb(peft_dir, hub, trained_adapter, tmp_path):
    (peft_dir / "io.yaml").write_text(LAUGHS)
    with deadline(60):
        result = m("import", peft_dir, "--outfile", tmp_path / "out")
        assert result.exit_code == 2 and "anchors and aliases" in said(result), result.output
        bomb = tmp_path / "bomb.yaml"
        bomb.write_text(LAUGHS)
        result = m("upload", trained_adapter, "--name", f"{USER}/x", "--intrinsic", "--io-yaml", bomb)
    assert result.exit_code != 0 and "anchors and aliases" in said(result), result.output
    assert [r for r in hub.requests if r[0] == "POST"] == []


# model cards


@pytest.mark.parametrize(
    "front",
    ["foo: [unclosed\nbar: {", LAUGHS, "- a list\n- not a mapping"],
    ids=["invalid", "laughs", "list"],
)
def test_export_skips_a_broken_card_front_matter_with_a_warning(trained_adapter, tmp_path, front):
    adapter = Path(shutil.copytree(trained_adapter, tmp_path / "engine"))
    (adapter / "README.md").write_text(f"---\n{front}\n---\n# card\n")
    with deadline(60):
        result = m("export", adapter, "--outfile", tmp_path / "a.gguf")
    assert result.exit_code == 0, result.output
    assert "without the card's metadata" in said(result)
    assert (tmp_path / "a.gguf").stat().st_size > 0


# truncated or foreign weights, broken configs


def _truncate(d: Path) -> None:
    w = d / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:300])


def _foreign(d: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"model.embed.weight": torch.zeros(2, 2)}, str(d / "adapter_model.safetensors"))


def _config_text(text: str):
    return lambda d: (d / "adapter_config.json").write_text(text)


BROKEN = [
    ("truncated weights", _truncate, "safetensors"),
    ("foreign weights", _foreign, "LoRA"),
    ("non-JSON config", _config_text("peft_type: LORA"), "adapter_config.json"),
    ("deep config", _config_text("[" * 100_000 + "]" * 100_000), "nested deeper than 64"),
    ("list config", _config_text("[1, 2]"), "adapter_config.json"),
]


@pytest.mark.parametrize(("change", "words"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_import_and_export_of_broken_files_are_clean_errors(
    peft_dir, trained_adapter, tmp_path, change, words
):
    change(peft_dir)
    result = m("import", peft_dir, *LABEL_ARGS, "--outfile", tmp_path / "out")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert words in said(result) and not (tmp_path / "out").exists()
    adapter = Path(shutil.copytree(trained_adapter, tmp_path / "engine"))
    change(adapter)
    result = m("export", adapter, "--outfile", tmp_path / "a.gguf")
    assert result.exit_code in (1, 2) and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output and not (tmp_path / "a.gguf").exists()


# kills


def test_import_after_a_kill_between_the_renames_recovers_the_directory(peft_dir, tmp_path):
    """What SIGKILL between swap_into_place's two renames leaves: the user's directory as `.NAME.old-*`
    and the complete staging as `.NAME.partial-*`, NAME itself missing. The next import puts it back."""
    before = tree(peft_dir)
    old = tmp_path / ".peft.old-x1y2"
    peft_dir.rename(old)
    staging = tmp_path / ".peft.partial-z3"
    staging.mkdir()
    for name, data in before.items():
        (staging / name).write_bytes(data)
    (staging / "validora.json").write_text("{}")
    result = m("import", peft_dir, *LABEL_ARGS, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "interrupted" in said(result)
    assert {k: v for k, v in tree(peft_dir).items() if k != "validora.json"} == before
    assert (peft_dir / "validora.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peft"]


def _m_command() -> list[str]:
    return [str(Path(sys.executable).with_name("m"))]


def _terminate_when_staged(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run `m alora ARGS`, SIGTERM it once the output is staged (before the rename), return its end."""
    env = os.environ | {"VALIDORA_TEST_SWAP_DELAY": "60", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [*_m_command(), "alora", *map(str, args)], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    seen = []
    start = time.monotonic()
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if "validora-test: staged" in line:
            proc.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() - start < 240, "".join(seen)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "".join(seen) + err)


def test_sigterm_during_import_and_export_exits_130_and_leaves_nothing(peft_dir, trained_adapter, tmp_path):
    before = tree(peft_dir)
    done = _terminate_when_staged(["import", peft_dir, *LABEL_ARGS, "--overwrite"], tmp_path)
    assert done.returncode == 130, done.stderr
    assert tree(peft_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peft"]

    adapter = Path(shutil.copytree(trained_adapter, tmp_path / "engine"))
    out = tmp_path / "engine.gguf"
    out.write_bytes(b"earlier")
    done = _terminate_when_staged(["export", adapter, "--outfile", out, "--overwrite"], tmp_path)
    assert done.returncode == 130, done.stderr
    assert out.read_bytes() == b"earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine", "engine.gguf", "peft"]


def test_a_hub_cache_snapshot_may_link_to_its_blobs_only(tmp_path):
    from validora.errors import AdapterError
    from validora.llamacpp.gguf import _check_links

    repo = tmp_path / "models--org--engine"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc").write_bytes(b"w")
    snapshot = repo / "snapshots" / "0123"
    snapshot.mkdir(parents=True)
    (snapshot / "adapter_model.safetensors").symlink_to("../../blobs/abc")
    _check_links(snapshot)
    (tmp_path / "elsewhere").write_text("x")
    (snapshot / "notes.md").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(AdapterError, match=r"notes\.md -> "):
        _check_links(snapshot)
