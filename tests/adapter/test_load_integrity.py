"""A load reads exactly one whole, sane adapter onto the right base model (issue 20, items 2-4 and 8).

Weights that do not match their config (emptied, renamed, misshapen, NaN, truncated), configs with
insane numbers or contradicting validora.json, files that are directories, FIFOs or links out of the
adapter: each is an AdapterError at load. A directory swapped during the base model's load is never
mixed with the adapter read before. A base model with other weights than the training one is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from validora.adapter import dirread
from validora.adapter.integrity import check_base_weights
from validora.adapter.layouts import adapter_digest
from validora.adapter.loading import CustomIntrinsicAdapter
from validora.adapter.schema import AdapterInfo
from validora.adapter.snapshot import read_snapshot
from validora.backends import validator as validator_module
from validora.backends.validator import load_validator
from validora.core.models import fingerprint_mismatch, weights_fingerprint
from validora.errors import AdapterError

from ..conftest import deadline

WEIGHTS = "adapter_model.safetensors"
TEXTS = ["The engine knocks loudly under load.", "Blue smoke comes from the exhaust at start."]


@pytest.fixture
def copy(trained_adapter, tmp_path) -> Path:
    return Path(shutil.copytree(trained_adapter, tmp_path / "engine"))


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is KeyError:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def edit_weights(directory: Path, change) -> None:
    tensors = load_file(directory / WEIGHTS)
    save_file(change(tensors), directory / WEIGHTS)


def refused(directory: Path, loaded, *words: str) -> str:
    """The AdapterError a load gives (nothing attached to the shared model: checks come first)."""
    with pytest.raises(AdapterError) as err, deadline(60):
        load_validator(directory, loaded=loaded)
    text = str(err.value)
    for word in words:
        assert word in text, text
    return text


# ----- (3) weights match the config -------------------------------------------------------------------
def renamed(tensors):
    key = sorted(tensors)[0]
    tensors[key.replace("lora_A", "lora_X")] = tensors.pop(key)
    return tensors


def with_nan(tensors):
    key = sorted(k for k in tensors if "lora_B" in k)[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    return tensors


def misshapen(tensors):
    key = sorted(k for k in tensors if "lora_A" in k)[0]
    tensors[key] = tensors[key][:-1].clone()
    return tensors


def foreign(tensors):
    tensors["base_model.model.model.layers.0.mlp.extra.weight"] = torch.zeros(2, 2)
    return tensors


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda t: {}, ["holds no tensors"]),
        (renamed, ["missing", "lora_A", "not this adapter's", "lora_X"]),
        (with_nan, ["NaN"]),
        (misshapen, ["shape"]),
        (foreign, ["not this adapter's", "mlp.extra.weight"]),
        (lambda t: {k: v.to(torch.int32) for k, v in t.items()}, ["not floating point"]),
    ],
    ids=["empty", "renamed", "nan", "misshapen", "foreign", "int"],
)
def test_weights_that_do_not_match_their_config_are_refused(copy, loaded, change, words):
    edit_weights(copy, change)
    refused(copy, loaded, "'engine'", WEIGHTS, *words)


def nudged(tensors):
    """One weight changed by a little: finite, right shape, another adapter's verdicts."""
    key = sorted(k for k in tensors if "lora_B" in k)[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] += 0.25
    return tensors


def test_a_weights_file_changed_after_saving_is_refused_by_its_recorded_sha256(copy, loaded, fresh_model):
    """Training records each saved file's sha256; a byte changed later that every other check passes
    (finite, right shape and dtype) is refused, naming the file. Adapters saved before keep loading."""
    info = json.loads((copy / "validora.json").read_text())
    assert set(info["file_sha256"]) == {WEIGHTS, "lexical.safetensors"}
    edit_weights(copy, nudged)
    refused(copy, loaded, WEIGHTS, "is not the file its validora.json records", "changed or damaged")
    edit_json(copy / "validora.json", file_sha256=KeyError)  # as written before the hashes existed
    with deadline(60):
        assert load_validator(copy, loaded=fresh_model()).predict(TEXTS[:1])[0].label  # not the shared model
    edit_json(copy / "validora.json", file_sha256={WEIGHTS: "0" * 63})
    refused(copy, loaded, "'file_sha256'")


def test_truncated_weights_are_refused(copy, loaded):
    data = (copy / WEIGHTS).read_bytes()
    (copy / WEIGHTS).write_bytes(data[: len(data) // 2])
    refused(copy, loaded, "not a whole safetensors file")


# ----- (2) every number of validora.json and adapter_config.json, and clean errors -----------------
@pytest.mark.parametrize(
    ("file", "changes", "field"),
    [
        ("validora.json", {"temperature": 1e-300}, "temperature"),
        ("validora.json", {"temperature": 1e300}, "temperature"),
        ("validora.json", {"temperature": float("nan")}, "temperature"),
        ("validora.json", {"lexical": {"weight": 1.5, "mixture_temperature": 1.0}}, "lexical"),
        ("validora.json", {"lexical": {"weight": 0.5, "mixture_temperature": 1e-300}}, "lexical"),
        ("validora.json", {"metrics": {"val_ece": float("inf")}}, "metrics.val_ece"),
        ("adapter_config.json", {"lora_alpha": 1e30}, "lora_alpha"),
        ("adapter_config.json", {"lora_alpha": float("nan")}, "lora_alpha"),
        ("adapter_config.json", {"r": 0}, "r"),
        ("adapter_config.json", {"r": -4}, "r"),
        ("adapter_config.json", {"r": 2.5}, "r"),
        ("adapter_config.json", {"lora_dropout": 1.0}, "lora_dropout"),
        ("adapter_config.json", {"lora_dropout": -0.1}, "lora_dropout"),
        ("adapter_config.json", {"peft_type": "IA3"}, "peft_type"),
        ("adapter_config.json", {"alora_invocation_tokens": KeyError}, "alora_invocation_tokens"),
        ("adapter_config.json", {"alora_invocation_tokens": [1, 2, 3]}, "alora_invocation_tokens"),
    ],
)
def test_insane_numbers_and_contradicting_configs_fail_at_load(copy, loaded, file, changes, field):
    edit_json(copy / file, **changes)
    refused(copy, loaded, field, file)


def test_unknown_target_modules_and_non_json_config_are_clean_errors(copy, loaded):
    edit_json(copy / "adapter_config.json", target_modules=["q_proj", "qkv_fused"])
    refused(copy, loaded, "qkv_fused", "not linear layers")
    (copy / "adapter_config.json").write_text("{not json")
    refused(copy, loaded, "adapter_config.json is not valid JSON")
    (copy / "validora.json").write_text("[" * 100 + "]" * 100)
    with pytest.raises(AdapterError, match="nested deeper"):
        CustomIntrinsicAdapter(str(copy))


@pytest.mark.parametrize("name", [WEIGHTS, "adapter_config.json", "validora.json", "lexical.safetensors"])
def test_a_fifo_or_directory_in_place_of_a_file_is_named_without_hanging(copy, name):
    (copy / name).unlink(missing_ok=True)
    os.mkfifo(copy / name)
    with pytest.raises(AdapterError, match="FIFO") as err, deadline(20):
        CustomIntrinsicAdapter(str(copy))
    assert name in str(err.value)
    (copy / name).unlink()
    (copy / name).mkdir()
    with pytest.raises(AdapterError, match="is a directory, not a regular file"), deadline(20):
        CustomIntrinsicAdapter(str(copy))


def test_a_symlink_out_of_the_adapter_is_refused_and_one_inside_is_read(copy, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(copy / WEIGHTS, outside)
    (copy / WEIGHTS).symlink_to(outside)
    with pytest.raises(AdapterError, match="outside the adapter directory") as err:
        CustomIntrinsicAdapter(str(copy))
    assert WEIGHTS in str(err.value)
    (copy / WEIGHTS).unlink()
    shutil.move(outside, copy / "weights.bin.safetensors")
    (copy / WEIGHTS).symlink_to("weights.bin.safetensors")
    assert CustomIntrinsicAdapter(str(copy)).snapshot.files[WEIGHTS]


# ----- (4) one adapter per load -------------------------------------------------------------------------
def other_adapter(source: Path, target: Path) -> Path:
    """The same adapter with other weights and another temperature: what a retrain would leave."""
    shutil.copytree(source, target)
    edit_weights(target, lambda t: {k: v * 3 if "lora_B" in k else v for k, v in t.items()})
    edit_json(target / "validora.json", temperature=3.5)
    return target


@pytest.fixture(scope="module")
def reference(trained_adapter, fresh_model):
    """Probabilities of the trained adapter through PEFT's own loader on its directory (the path before)."""
    from peft import PeftModel

    from validora.backends.base import LoadedAdapter
    from validora.backends.validator import Validator

    base = fresh_model()
    info = AdapterInfo.read(trained_adapter)
    model = PeftModel.from_pretrained(base.model, str(trained_adapter), adapter_name="validator").eval()
    adapter = LoadedAdapter.load("validator", info, trained_adapter, base.tokenizer)
    return [s.probs for s in Validator(model, adapter).predict(TEXTS)]


def close(a: list[dict], b: list[dict]) -> float:
    return max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_a_swap_during_the_base_model_load_keeps_the_first_adapter_whole(
    copy, tmp_path, fresh_model, reference, monkeypatch
):
    other = other_adapter(copy, tmp_path / "other")
    before = adapter_digest(copy)

    def slow_load(name, *, device):  # `train --overwrite` finishes while the base model loads
        shutil.move(copy, tmp_path / "old")
        shutil.move(other, copy)
        shutil.rmtree(tmp_path / "old")
        return fresh_model()

    monkeypatch.setattr(validator_module, "load_base_model", slow_load)
    validator = load_validator(copy)
    assert validator.adapter.snapshot.digest == before != adapter_digest(copy)
    assert validator.info.temperature != 3.5
    got = [s.probs for s in validator.predict(TEXTS)]
    assert close(got, reference) <= 1e-6  # the first adapter, whole, identical to PEFT's own loader


def test_a_directory_replaced_while_it_is_read_is_read_again_whole(copy, tmp_path, monkeypatch):
    other = other_adapter(copy, tmp_path / "other")
    expected = adapter_digest(other)
    read_at = dirread._read_at
    swapped = []

    def swapping(dir_fd, directory, name):
        data = read_at(dir_fd, directory, name)
        if not swapped:  # after validora.json, the directory is replaced and the old one removed
            swapped.append(name)
            shutil.move(copy, tmp_path / "old")
            shutil.move(other, copy)
            shutil.rmtree(tmp_path / "old")
        return data

    monkeypatch.setattr(dirread, "_read_at", swapping)
    snap = read_snapshot(copy)
    assert snap.digest == expected and snap.info.temperature == 3.5


def test_the_snapshot_digest_is_the_recorded_adapter_digest(trained_adapter):
    assert read_snapshot(trained_adapter).digest == adapter_digest(trained_adapter)


# ----- (8) base-model identity by weights --------------------------------------------------------------
def test_training_records_the_base_weights_fingerprint(trained_adapter, loaded):
    recorded = AdapterInfo.read(trained_adapter).base_fingerprint
    assert recorded == weights_fingerprint(loaded.model) and recorded["dtype"] == "float32"
    assert len(recorded["tensors"]) == 4 and fingerprint_mismatch(recorded, loaded.model) is None


def test_a_base_model_with_other_weights_is_refused_unless_allowed(trained_adapter, copy, fresh_model):
    other = fresh_model()  # the embedded model, same name and tokenizer, one weight changed
    other.model.to(torch.bfloat16)  # ... and in another dtype: the same weights still match
    recorded = AdapterInfo.read(trained_adapter).base_fingerprint
    assert fingerprint_mismatch(recorded, other.model) is None
    name = recorded["tensors"][1]["name"]
    with torch.no_grad():
        dict(other.model.named_parameters())[name].view(-1)[0] += 0.5
    text = refused(trained_adapter, other, "other base-model weights", name, "allow_base_mismatch=True")
    assert "smollm2-135m-instruct" in text
    edit_json(copy / "validora.json", base_fingerprint=KeyError)  # older adapters: the name check alone
    check_base_weights(AdapterInfo.read(copy), other.model, "engine", allow_base_mismatch=False)
    with pytest.warns(UserWarning, match="Loading anyway"):
        validator = load_validator(trained_adapter, loaded=other, allow_base_mismatch=True)
    assert validator.predict(TEXTS[:1])[0].label


@pytest.mark.parametrize("stride", [10**12, 0, -3, 10**40, 2.5, True])
def test_a_malformed_fingerprint_stride_is_an_adapter_error_naming_base_fingerprint(copy, loaded, stride):
    data = json.loads((copy / "validora.json").read_text())
    data["base_fingerprint"]["tensors"][0]["stride"] = stride
    edit_json(copy / "validora.json", base_fingerprint=data["base_fingerprint"])
    refused(copy, loaded, "validora.json", "base_fingerprint")


def test_any_failure_comparing_the_fingerprint_is_an_adapter_error(copy, loaded, monkeypatch):
    from validora.core import models

    def broken(recorded, model):
        raise RuntimeError("self.stride(-1) must be 1 to view Float as Byte")

    monkeypatch.setattr(models, "fingerprint_mismatch", broken)
    refused(copy, loaded, "validora.json's base_fingerprint is malformed", "stride(-1)")
