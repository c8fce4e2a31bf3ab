"""LocalHFBackend.add_adapter loads one whole, sane adapter onto the right base model (issue 20, items 3, 4, 8):
the same checks as load_validator, through CustomIntrinsicAdapter and AdapterRegistry.add."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from validora import CustomIntrinsicAdapter, LocalHFBackend
from validora.errors import AdapterError

NOTE = "High vibration at 3100 RPM, connecting rod suspected."
REQ = "The failure mode must not be 'no_failure'."


def test_the_backend_refuses_broken_weights_and_other_base_weights(trained_adapter, tmp_path):
    backend = LocalHFBackend(device="cpu")
    emptied = shutil.copytree(trained_adapter, tmp_path / "emptied")
    save_file({}, emptied / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=r"'emptied'.*holds no tensors"):
        backend.add_adapter(CustomIntrinsicAdapter(str(emptied)))
    insane = shutil.copytree(trained_adapter, tmp_path / "insane")
    config = json.loads((insane / "adapter_config.json").read_text())
    (insane / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 1e30}))
    with pytest.raises(AdapterError, match="lora_alpha"):
        backend.add_adapter(CustomIntrinsicAdapter(str(insane)))
    assert backend.adapters == {}

    # The adapter is read when it is constructed: a directory replaced before it is added is not mixed in.
    engine = CustomIntrinsicAdapter(str(shutil.copytree(trained_adapter, tmp_path / "engine")))
    tensors = load_file(trained_adapter / "adapter_model.safetensors")
    save_file({k: v * 3 for k, v in tensors.items()}, tmp_path / "engine" / "adapter_model.safetensors")
    backend.add_adapter(engine)
    (scored,) = backend.check(NOTE, [("engine", REQ)])
    backend.remove_adapter("engine")
    again = CustomIntrinsicAdapter(str(trained_adapter))
    backend.add_adapter(again)
    (reference,) = backend.check(NOTE, [("engine", REQ)])
    backend.remove_adapter("engine")
    assert scored.scores.probs == pytest.approx(reference.scores.probs, abs=1e-6)

    # Another base model with the same name and tokenizer: one fingerprinted weight changed.
    name = again.info.base_fingerprint["tensors"][0]["name"]
    with torch.no_grad():
        dict(backend._model.named_parameters())[name].view(-1)[0] += 0.5
    with pytest.raises(AdapterError, match="other base-model weights"):
        backend.add_adapter(CustomIntrinsicAdapter(str(trained_adapter)))
    assert backend.adapters == {}
    with pytest.warns(UserWarning, match="allow_base_mismatch"):
        backend.add_adapter(CustomIntrinsicAdapter(str(trained_adapter), allow_base_mismatch=True))
    assert set(backend.adapters) == {"engine"}
