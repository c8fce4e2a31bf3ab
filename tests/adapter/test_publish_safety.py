"""Publishing never leaks this machine: no local path in any published file, no file reached through a link.

Uploads go through the real CLI and huggingface_hub client to the local fake Hub.
"""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from validora.adapter import ioyaml
from validora.adapter.card import hub_base_model
from validora.adapter.schema import AdapterInfo
from validora.cli import app
from validora.core.names import public_name
from validora.errors import ConfigError

from ..fake_hub import USER

REPO = f"{USER}/engine-safety"
HOME = "/home/someone"
SECRET_DIR = "acme-confidential"  # not "private": the card's data warning says that word
BASE = f"{HOME}/{SECRET_DIR}/models/x"


def m(*args: str):
    return CliRunner().invoke(app, ["alora", *map(str, args)])


def writes(hub) -> list[tuple[str, str]]:
    return [(method, path) for method, path in hub.requests if method == "POST"]


@pytest.fixture
def adapter(trained_adapter, tmp_path) -> Path:
    return Path(shutil.copytree(trained_adapter, tmp_path / "engine"))


@pytest.fixture
def local_base(adapter) -> Path:
    """The trained adapter, rewritten as if trained on a base model in a private local directory."""
    info = json.loads((adapter / "validora.json").read_text())
    info["base_model"] = info["training"]["basemodel"] = BASE
    info["training"] |= {"datafile": f"{HOME}/{SECRET_DIR}/data/train.jsonl", "outfile": str(adapter)}
    (adapter / "validora.json").write_text(json.dumps(info))
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = BASE
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    metrics = json.loads((adapter / "metrics.json").read_text())
    (adapter / "metrics.json").write_text(json.dumps(metrics | {"outfile": f"{HOME}/{SECRET_DIR}/out"}))
    return adapter


@pytest.mark.parametrize("layout", [[], ["--intrinsic"]], ids=["plain", "intrinsic"])
def test_no_published_file_names_a_local_base_model_path(hub, local_base, layout):
    result = m("upload", local_base, "--name", REPO, *layout)
    assert result.exit_code == 0, result.output
    files = hub.files(REPO)
    prefix = "engine/x/alora/" if layout else ""
    assert {f"{prefix}README.md", f"{prefix}validora.json", f"{prefix}adapter_config.json"} <= set(files)
    assert (f"{prefix}io.yaml" in files) == bool(layout) and (not layout or "README.md" in files)
    for name, data in files.items():
        for secret in (HOME.encode(), SECRET_DIR.encode(), str(local_base.parent).encode()):
            assert secret not in data, f"{name} contains {secret!r}"
    published = json.loads(files[f"{prefix}validora.json"])
    assert published["base_model"] == published["training"]["basemodel"] == "x"
    assert published["training"]["datafile"] == "train.jsonl"
    assert json.loads(files[f"{prefix}adapter_config.json"])["base_model_name_or_path"] == "x"
    card = files[f"{prefix}README.md"].decode()
    assert "base_model:" not in card.split("---")[1]  # the Hub refuses a base_model it does not host
    assert 'LocalHFBackend(model_id="x")' in card


def test_a_file_still_naming_the_local_path_is_refused(hub, local_base):
    io_yaml = ioyaml.generate(AdapterInfo.read(local_base)) + f"# made on {BASE}\n"
    (local_base / "io.yaml").write_text(io_yaml)
    result = m("upload", local_base, "--name", REPO, "--intrinsic")
    assert result.exit_code != 0
    assert "io.yaml contains the local path" in result.stderr and "Nothing was sent" in result.stderr
    assert writes(hub) == []


def test_one_rule_for_published_names():
    cases = {
        BASE: "x",
        "~/models/x": "x",
        "./x": "x",
        "../models/x/": "x",
        "C:\\Users\\someone\\x": "x",
        "models/sub/x": "x",
        "/x.gguf": "x.gguf",
        "ibm-granite/granite-3.3-8b-instruct": "ibm-granite/granite-3.3-8b-instruct",
        "smollm2-135m-instruct": "smollm2-135m-instruct",
    }
    assert {name: public_name(name) for name in cases} == cases
    assert hub_base_model("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_base_model("org/model") == "org/model"
    assert hub_base_model(BASE) is None and hub_base_model("x") is None


@pytest.mark.parametrize("where", ["outside", "inside", "folder"])
def test_symbolic_links_are_refused_and_nothing_is_sent(hub, adapter, tmp_path, where):
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY----- very secret\n")
    if where == "outside":
        (adapter / "notes.txt").symlink_to(secret)
    elif where == "inside":  # refused as well: one simple rule, and no way to reach hidden files
        (adapter / "card-copy.md").symlink_to(adapter / "README.md")
    else:
        (adapter / "extra").symlink_to(tmp_path, target_is_directory=True)
    result = m("upload", adapter, "--name", REPO)
    assert result.exit_code != 0
    assert "symbolic links" in result.stderr and "Nothing was sent" in result.stderr
    assert ("notes.txt" if where == "outside" else "card-copy.md" if where == "inside" else "extra") in (
        result.stderr
    )
    assert writes(hub) == []


def test_hidden_links_are_not_uploaded_so_not_refused(hub, adapter, tmp_path):
    (adapter / ".cache").mkdir()
    (adapter / ".cache" / "link").symlink_to(tmp_path)
    result = m("upload", adapter, "--name", REPO)
    assert result.exit_code == 0, result.output
    assert not any(".cache" in name for name in hub.files(REPO))


LINE_BREAKS_AND_CONTROLS = ["a\u2028b", "c\x85d", "e\u2029f", "\x7f", "\x9f", "\ufeffg", "\ufffe"]
ORDINARY_TROUBLE = ["'q\"", "\\", "a\nb", "\t", " lead", "# x", "a: b", "- x", "{", "\x00", "é", "😀"]


@pytest.mark.parametrize("labels", [LINE_BREAKS_AND_CONTROLS, ORDINARY_TROUBLE, ["piston_rings", "no"]])
def test_generated_io_yaml_validates_for_any_label(tmp_path, labels):
    info = AdapterInfo(
        adapter_type="alora",
        base_model="org/model\u2028with-break",
        labels=labels,
        prompt={"invocation_prompt": "<|x|>\n"},
    )
    text = ioyaml.generate(info)
    path = tmp_path / "io.yaml"
    path.write_text(text, encoding="utf-8")
    assert ioyaml.validate(path, labels) == text
    assert json.loads(yaml.safe_load(text)["response_format"])["enum"] == labels


def test_io_yaml_with_a_lone_surrogate_label_is_refused(tmp_path):
    """A lone surrogate is not text (core/jsonio refuses it everywhere): an io.yaml naming one is refused."""
    labels = ["a", "\ud800"]
    info = AdapterInfo(
        adapter_type="alora", base_model="org/model", labels=labels, prompt={"invocation_prompt": "<|x|>\n"}
    )
    path = tmp_path / "io.yaml"
    path.write_text(ioyaml.generate(info), encoding="utf-8")
    with pytest.raises(ConfigError, match="lone surrogate"):
        ioyaml.validate(path, labels)


def test_a_plain_upload_removes_every_file_validora_wrote_before_and_nothing_of_the_owners(tmp_path):
    """Stale remote files: each of validora's own outputs (the reliability diagram included), never the owner's."""
    from validora.adapter.publish import UploadSet, stale
    from validora.adapter.schema import WRITTEN_FILES

    plan = UploadSet(root=tmp_path, prefix="", files=[], card="")
    remote = {*WRITTEN_FILES, "io.yaml", "notes.md", "train.jsonl"}
    local = {"adapter_config.json", "adapter_model.safetensors", "validora.json", "README.md"}
    gone = stale(plan, remote, local)
    assert "reliability_diagram.png" in gone and "training_curves.png" in gone and "train.jsonl" in gone
    assert "notes.md" not in gone and "README.md" not in gone
