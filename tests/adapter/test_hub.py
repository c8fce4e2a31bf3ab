"""Sharing adapters: upload (plain and intrinsics layouts), io.yaml, model card, loading by hub id.

Everything goes through the real huggingface_hub client and the real CLI, against a local fake Hub.
"""

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi
from typer.testing import CliRunner

from validora import CustomIntrinsicAdapter
from validora.adapter import ioyaml, layouts
from validora.adapter.schema import AdapterInfo
from validora.backends.validator import load_validator
from validora.cli import app
from validora.errors import AdapterError, ConfigError

from ..conftest import LABELS
from ..fake_hub import USER

REPO = f"{USER}/engine-check"
TEXTS = ["Heavy knock under load, metal flakes in the oil.", "Ran smooth for 20 minutes after a new plug."]


def m(*args: str):
    return CliRunner().invoke(app, ["alora", *map(str, args)])


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def writes(hub) -> list[tuple[str, str]]:
    return [(m, p) for m, p in hub.requests if m == "POST"]


@pytest.fixture
def adapter(trained_adapter, tmp_path) -> Path:
    """A private copy of the trained adapter, so tests may add files to it."""
    return Path(shutil.copytree(trained_adapter, tmp_path / "engine"))


def test_plain_upload_round_trip(hub, adapter):
    before = digest(adapter)
    result = m("upload", adapter, "--name", REPO)
    assert result.exit_code == 0, result.output
    (commit,) = [c for c in hub.commits(REPO) if c.title.startswith("Upload validora adapter")]
    assert f"commit: {commit.oid}" in result.stdout and f"{hub.endpoint}/{REPO}" in result.stdout
    files = hub.files(REPO)
    assert {"adapter_model.safetensors", "adapter_config.json", "validora.json", "README.md"} <= set(files)
    assert files["adapter_model.safetensors"] == (adapter / "adapter_model.safetensors").read_bytes()
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: peft\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n")
    assert f'CustomIntrinsicAdapter(model_id="{REPO}"' in card and "memorise" in card
    assert HfApi().model_info(REPO).private is True  # --private is the default
    assert digest(adapter) == before  # the user's folder is only read

    result = m("download", REPO)
    assert result.exit_code == 0, result.output
    downloaded = Path(result.stdout.strip())
    assert (downloaded / "adapter_model.safetensors").read_bytes() == files["adapter_model.safetensors"]

    local = load_validator(adapter, device="cpu").predict(TEXTS)
    remote = load_validator(REPO, device="cpu").predict(TEXTS)
    for got, want in zip(remote, local, strict=True):
        assert got.probs == pytest.approx(want.probs, abs=1e-6) and got.label == want.label


def test_intrinsic_upload_layout_io_yaml_and_loading(hub, adapter, tmp_path):
    custom = tmp_path / "my-io.yaml"
    custom.write_text(
        ioyaml.generate(AdapterInfo.read(adapter)).replace("temperature: 0.0", "temperature: 0")
    )
    result = m("upload", adapter, "--name", REPO, "--intrinsic", "--io-yaml", custom,
               "--intrinsic-name", "failure_mode", "--public")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "PUBLIC" in result.stderr and "memorise" in result.stderr
    files = hub.files(REPO)
    folder = "failure_mode/SmolLM2-135M-Instruct/alora"
    for name in ("adapter_model.safetensors", "adapter_config.json", "validora.json", "io.yaml", "README.md"):
        assert f"{folder}/{name}" in files, sorted(files)
    assert "my-io.yaml" not in " ".join(files) and files[f"{folder}/io.yaml"] == custom.read_bytes()
    assert f"{folder}/confusion_matrix.png" in files["README.md"].decode()  # the repository's own card
    schema = json.loads(yaml.safe_load(files[f"{folder}/io.yaml"])["response_format"])
    assert schema["enum"] == LABELS
    assert HfApi().model_info(REPO).private is False

    loaded = CustomIntrinsicAdapter(model_id=REPO, base_model_name="SmolLM2-135M-Instruct")
    assert loaded.name == "failure_mode" and loaded.path.as_posix().endswith(folder)
    assert loaded.is_alora and loaded.labels == LABELS


def test_upload_to_an_existing_repo_and_a_branch(hub, adapter):
    HfApi().create_repo(REPO, private=True)
    result = m("upload", adapter, "--name", REPO, "--branch", "v2", "--commit-message", "Second model")
    assert result.exit_code == 0, result.output
    assert "Updated" in result.stderr
    assert hub.commits(REPO, "v2")[-1].title == "Second model"
    assert "validora.json" in hub.files(REPO, "v2") and "validora.json" not in hub.files(REPO)


def test_missing_token_is_a_clear_error_and_sends_nothing(hub, adapter, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    result = m("upload", adapter, "--name", REPO)
    assert result.exit_code != 0
    assert "HF_TOKEN" in result.stderr and "hf auth login" in result.stderr
    assert writes(hub) == [] and not any("/api/models/" in p for _, p in hub.requests)


def test_token_is_never_printed(hub, adapter):
    hub.fail_next("commit", status=500, message="storage backend unavailable")
    result = m("upload", adapter, "--name", REPO)
    assert result.exit_code != 0
    assert hub.token not in result.output


def test_bad_io_yaml_is_refused_before_any_request(hub, adapter, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: null\nresponse_format: |\n  {}\ntransformations: [\nparameters: {}\n")
    result = m("upload", adapter, "--name", REPO, "--intrinsic", "--io-yaml", broken)
    assert result.exit_code == 2 and "YAML syntax error" in result.stderr and "broken.yaml:" in result.stderr
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(
        'model: null\nresponse_format: |\n  {"type": "string", "enum": ["yes", "no"]}\n'
        "transformations: 3\nparameters: {}\n"
    )
    with pytest.raises(ConfigError) as err:
        ioyaml.validate(wrong, LABELS)
    message = str(err.value)
    assert "wrong.yaml:2:" in message and "missing ['connecting_rod'" in message and "'yes'" in message
    assert "wrong.yaml:4:" in message and "transformations" in message
    assert writes(hub) == []


def test_io_yaml_command_prints_a_valid_file(adapter, tmp_path):
    result = m("io-yaml", adapter)
    assert result.exit_code == 0, result.output
    path = tmp_path / "io.yaml"
    path.write_text(result.stdout)
    assert ioyaml.validate(path, LABELS) == result.stdout
    data = yaml.safe_load(result.stdout)
    assert data["transformations"] is None and data["parameters"]["max_completion_tokens"] >= 2


def test_data_files_are_refused_unless_allowed(hub, adapter):
    (adapter / "train.jsonl").write_text('{"item": "secret note", "label": "no_failure"}\n')
    result = m("upload", adapter, "--name", REPO)
    assert result.exit_code != 0 and "train.jsonl" in result.stderr and "--allow-data" in result.stderr
    assert writes(hub) == []
    result = m("upload", adapter, "--name", REPO, "--allow-data")
    assert result.exit_code == 0, result.output
    assert "train.jsonl" in hub.files(REPO)


def test_server_error_mid_upload_leaves_local_files_untouched(hub, adapter):
    before = digest(adapter)
    hub.fail_next("commit", status=500, message="storage backend unavailable")
    result = m("upload", adapter, "--name", REPO)
    assert result.exit_code != 0
    assert "HTTP 500" in result.stderr and "storage backend unavailable" in result.stderr
    assert "validora.json" not in hub.files(REPO)  # nothing half-committed
    assert digest(adapter) == before


def test_adapter_type_comes_from_validora_json_and_peft_config(adapter):
    from validora.adapter.publish import adapter_kind

    info = AdapterInfo.read(adapter)
    assert adapter_kind(adapter, info) == "alora"
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["alora_invocation_tokens"] = None  # present but null: a plain LoRA
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="inconsistent"):
        adapter_kind(adapter, info)
    info.adapter_type = "lora"
    assert adapter_kind(adapter, info) == "lora"


def test_both_intrinsic_layouts_are_found(tmp_path):
    for rel in ("new_one/SmolLM2-135M-Instruct/alora", "new_one/SmolLM2-135M-Instruct/lora",
                "old_one/lora/SmolLM2-135M-Instruct", "old_one/alora/granite-3.3-8b-instruct"):  # fmt: skip
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "validora.json").write_text("{}")
    found = layouts.locate(tmp_path, intrinsic_name="new_one")
    assert (found.kind, found.base_model_name) == ("alora", "SmolLM2-135M-Instruct")  # aLoRA preferred
    found = layouts.locate(
        tmp_path, intrinsic_name="old_one", base_model_name="HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert found.path == tmp_path / "old_one/lora/SmolLM2-135M-Instruct"
    with pytest.raises(LookupError, match="several adapters"):
        layouts.locate(tmp_path)
    with pytest.raises(LookupError, match="intrinsic_name 'nope'"):
        layouts.locate(tmp_path, intrinsic_name="nope")


def test_default_upload_never_lands_in_an_existing_public_repo(hub, adapter):
    HfApi().create_repo(REPO, private=False)
    result = m("upload", adapter, "--name", REPO)
    assert result.exit_code != 0 and "already exists and is PUBLIC" in result.stderr
    assert not [c for c in hub.commits(REPO) if c.title.startswith("Upload")]


def test_reupload_removes_what_the_previous_upload_left(hub, adapter, tmp_path):
    (adapter / "notes.csv").write_text("item,label\nsecret,no_failure\n")
    assert m("upload", adapter, "--name", REPO, "--intrinsic", "--allow-data").exit_code == 0
    folder = "engine/SmolLM2-135M-Instruct/alora"
    assert f"{folder}/notes.csv" in hub.files(REPO)
    (adapter / "notes.csv").unlink()
    result = m("upload", adapter, "--name", REPO, "--intrinsic")
    assert result.exit_code == 0, result.output
    files = hub.files(REPO)
    assert f"{folder}/notes.csv" not in files and f"{folder}/validora.json" in files
    assert len([c for c in hub.commits(REPO) if c.title.startswith("Upload")]) == 2  # one commit each


def test_published_metadata_holds_no_local_paths(hub, adapter):
    assert m("upload", adapter, "--name", REPO).exit_code == 0
    files = hub.files(REPO)
    config = json.loads(files["adapter_config.json"])
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    training = json.loads(files["validora.json"])["training"]
    assert all("/" not in str(training.get(key, "")) for key in ("datafile", "outfile"))  # none, or names
    assert str(adapter.parent) not in files["validora.json"].decode()


def test_pickles_are_always_refused_and_options_are_checked(hub, adapter):
    (adapter / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    result = m("upload", adapter, "--name", REPO, "--allow-data")
    assert (
        result.exit_code != 0 and "pickled weights" in result.stderr and "--allow-data" not in result.stderr
    )
    (adapter / "pytorch_model.bin").unlink()
    result = m("upload", adapter, "--name", REPO, "--intrinsic-name", "x")
    assert result.exit_code == 2 and "--intrinsic" in result.stderr
    result = m("upload", adapter, "--name", REPO, "--intrinsic", "--intrinsic-name", "../escape")
    assert result.exit_code != 0 and "cannot be a repository folder" in result.stderr
    assert writes(hub) == []


def test_unknown_io_yaml_fields_are_named(adapter, tmp_path):
    text = ioyaml.generate(AdapterInfo.read(adapter)) + "instructions: typo\n"
    path = tmp_path / "io.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"io.yaml:\d+: unknown field 'instructions'"):
        ioyaml.validate(path, LABELS)


def test_refused_token_and_unknown_ids_say_what_to_check(hub, adapter, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_one")
    result = m("upload", adapter, "--name", REPO)
    assert (
        result.exit_code != 0 and "HF_TOKEN" in result.stderr and "hf_not_the_right_one" not in result.output
    )
    result = m("predict", "checkpoints/engin", "some text")
    assert result.exit_code != 0 and "No local directory 'checkpoints/engin'" in result.stderr


def test_layout_rules_read_a_listing_like_a_directory(tmp_path):
    paths = ["README.md", "data.jsonl", "new_one/SmolLM2-135M-Instruct/alora/validora.json",
             "new_one/SmolLM2-135M-Instruct/alora/io.yaml", "new_one/SmolLM2-135M-Instruct/alora/opt.pt",
             "new_one/SmolLM2-135M-Instruct/lora/validora.json", "old_one/lora/granite/validora.json",
             "new_one/SmolLM2-135M-Instruct/alora/sub/x.json"]  # fmt: skip
    for rel in paths:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    for names in ({"intrinsic_name": "new_one"}, {"base_model_name": "org/granite"}):
        found = layouts.choose(paths, **names)
        assert layouts.locate(tmp_path, **names) == replace(found, path=tmp_path / found.path)
    assert layouts.files_of(paths, layouts.choose(paths, intrinsic_name="new_one")) == [
        "new_one/SmolLM2-135M-Instruct/alora/io.yaml",
        "new_one/SmolLM2-135M-Instruct/alora/validora.json",
    ]
    with pytest.raises(LookupError, match="several adapters"):
        layouts.choose(paths)
    assert layouts.choose(["validora.json", *paths]).path == Path(".")


def test_download_fetches_only_the_chosen_adapter_and_works_offline(hub, adapter, tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "repo"
    folders = {name: f"{name}/SmolLM2-135M-Instruct/alora" for name in ("first", "second")}
    for folder in folders.values():
        shutil.copytree(adapter, repo / folder, ignore=shutil.ignore_patterns("*.png"))
    (repo / folders["first"] / "io.yaml").write_text(ioyaml.generate(AdapterInfo.read(adapter)))
    (repo / folders["first"] / "optimizer.pt").write_bytes(b"\x80\x04pickle")
    (repo / "data.jsonl").write_text('{"item": "secret", "label": "no_failure"}\n')
    (repo / "model.pkl").write_bytes(b"\x80\x04pickle")
    HfApi().create_repo(REPO)
    HfApi().upload_folder(repo_id=REPO, folder_path=repo)

    result = m("download", REPO, "--intrinsic-name", "first")
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    snapshot = path.parents[2]
    expected = {f"{folders['first']}/{f}" for f in ("README.md", "adapter_config.json", "adapter_model.safetensors",
                                                    "io.yaml", "metrics.json", "validora.json",
                                                    "lexical.safetensors")}  # fmt: skip
    assert {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()} == expected
    assert not [p for _, p in hub.requests if "/resolve/" in p and not p.endswith(tuple(expected))]
    assert CustomIntrinsicAdapter(model_id=REPO, intrinsic_name="first").path == path

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the cached listing and snapshot suffice
    before = len(hub.requests)
    assert CustomIntrinsicAdapter(model_id=REPO, intrinsic_name="first").path == path
    result = m("download", REPO)  # the cached listing still knows both adapters
    assert result.exit_code != 0 and "several adapters" in result.stderr
    result = m("download", REPO, "--intrinsic-name", "second")  # listed, never downloaded
    assert result.exit_code != 0 and "not in the local Hugging Face cache" in result.stderr
    shutil.rmtree(snapshot.parents[1] / "trees")  # a cache without listings (older clients): as it is
    assert CustomIntrinsicAdapter(model_id=REPO, intrinsic_name="first").path == path
    assert len(hub.requests) == before
