"""`m alora export`: the adapter as llama.cpp's LoRA adapter GGUF, checked against the PEFT tensors,
against the base GGUF's own q/k layout, and (when the llama.cpp tree is in the cache) byte for byte
against llama.cpp's `convert_lora_to_gguf.py`."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize
from safetensors import safe_open
from typer.testing import CliRunner

from validora.adapter.layouts import adapter_digest
from validora.adapter.schema import AdapterInfo
from validora.cli import app
from validora.core.models import local_files, resolve_base_model
from validora.errors import AdapterError, ConfigError
from validora.llamacpp import build, server
from validora.llamacpp.gguf import export_gguf
from validora.llamacpp.server import served_name

GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}  # fmt: skip
HEADS = {"q_proj": 9, "k_proj": 3}  # SmolLM2-135M: 9 query heads, 3 key/value heads, head size 64


def rope_rows(hf: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores each head's rotary halves interleaved: its row 2i+j is HF's row j*d/2+i."""
    d = hf.shape[0] // heads
    order = [h * d + j * (d // 2) + i for h in range(heads) for i in range(d // 2) for j in range(2)]
    return hf[order]


def fields(path: Path) -> dict:
    reader = GGUFReader(path)
    return {k: (f.contents(), f.types) for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def copy_adapter(src: Path, dst: Path, *, config: dict | None = None, info: dict | None = None) -> Path:
    shutil.copytree(src, dst)
    for name, changes in (("adapter_config.json", config), ("validora.json", info)):
        if changes:
            data = json.loads((dst / name).read_text())
            data.update(changes)
            (dst / name).write_text(json.dumps(data))
    return dst


@pytest.fixture(scope="module")
def exported(trained_adapter, tmp_path_factory) -> Path:
    return export_gguf(
        trained_adapter, tmp_path_factory.mktemp("gguf") / "engine.gguf", same_as_converter=True
    )


def test_tensors_are_the_peft_matrices_in_llama_cpp_layout(trained_adapter, exported):
    reader = GGUFReader(exported)
    got = {t.name: t for t in reader.tensors}
    expected = set()
    with safe_open(str(trained_adapter / "adapter_model.safetensors"), framework="np") as f:
        for key in f.keys():  # noqa: SIM118
            parts = key.split(".")  # base_model.model.model.layers.N.{self_attn|mlp}.MODULE.lora_X.weight
            layer, module, ab = parts[4], parts[6], parts[7][-1].lower()
            name = f"blk.{layer}.{GGUF_NAMES[module]}.weight.lora_{ab}"
            want = f.get_tensor(key).astype(np.float32)
            if ab == "b" and module in HEADS:
                want = rope_rows(want, HEADS[module])
            tensor = got[name]
            assert tensor.tensor_type == GGMLQuantizationType.F32
            assert list(tensor.shape) == list(reversed(want.shape))  # GGUF lists ne0 (the row length) first
            np.testing.assert_array_equal(tensor.data, want)
            expected.add(name)
    assert expected == set(got) and len(got) == 2 * 7 * 30


def test_metadata_says_alora_adapter_with_invocation_tokens(trained_adapter, exported):
    info = AdapterInfo.read(trained_adapter)
    config = json.loads((trained_adapter / "adapter_config.json").read_text())
    meta = fields(exported)
    assert meta["general.architecture"][0] == "llama"
    assert meta["general.type"][0] == "adapter"
    assert meta["adapter.type"][0] == "lora"
    assert meta["adapter.lora.alpha"] == (float(config["lora_alpha"]), [GGUFValueType.FLOAT32])
    tokens, types = meta["adapter.alora.invocation_tokens"]
    assert tokens == info.prompt["invocation_ids"] and types == [GGUFValueType.ARRAY, GGUFValueType.UINT32]


def test_q_and_k_rows_follow_the_base_gguf_layout():
    """The permutation that turns HF q/k rows into llama.cpp's is the one the served base GGUF used:
    the dequantized base GGUF tensors equal the (transformers-converted) HF weights so permuted."""
    spec = resolve_base_model(None)
    base = {t.name: t for t in GGUFReader(spec.location).tensors}
    with safe_open(str(Path(local_files(spec)) / "model.safetensors"), framework="np") as f:
        for module, heads in HEADS.items():
            hf = f.get_tensor(f"model.layers.3.self_attn.{module}.weight")
            tensor = base[f"blk.3.{GGUF_NAMES[module]}.weight"]
            served = dequantize(tensor.data, tensor.tensor_type).reshape(hf.shape)
            np.testing.assert_allclose(rope_rows(hf, heads), served, atol=1e-6)
            assert not np.allclose(hf, served, atol=1e-3)  # the permutation is not the identity here


def test_byte_identical_to_llama_cpp_converter(trained_adapter, exported, tmp_path):
    # The official tree comes from PyPI (the llama-cpp-python sdist) once, into the cache; no build needed.
    tree = build.fetch_sources(say=lambda line: None)
    out = tmp_path / "official.gguf"
    done = subprocess.run(
        [sys.executable, str(tree / "convert_lora_to_gguf.py"), "--base", local_files(resolve_base_model(None)),
         "--outfile", str(out), str(trained_adapter)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert fields(exported) == fields(out)
    assert exported.read_bytes() == out.read_bytes()


def test_lora_adapter_has_no_invocation_tokens(trained_adapter, tmp_path):
    lora = copy_adapter(
        trained_adapter,
        tmp_path / "lora",
        config={"alora_invocation_tokens": None},
        info={"adapter_type": "lora"},
    )
    meta = fields(export_gguf(lora, tmp_path / "lora.gguf"))
    assert "adapter.alora.invocation_tokens" not in meta and meta["adapter.type"][0] == "lora"


@pytest.mark.parametrize(
    ("config", "error", "words"),
    [
        ({"use_dora": True}, ConfigError, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, ConfigError, "modules_to_save"),
        ({"use_rslora": True}, ConfigError, "use_rslora"),
        ({"alora_invocation_tokens": [1, 2]}, AdapterError, "inconsistent"),
    ],
)
def test_refuses_what_llama_cpp_cannot_express(trained_adapter, tmp_path, config, error, words):
    bad = copy_adapter(trained_adapter, tmp_path / "bad", config=config)
    with pytest.raises(error, match=words):
        export_gguf(bad, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_refuses_an_unsupported_base_architecture(trained_adapter, tmp_path):
    base = tmp_path / "gpt2"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "n_layer": 2}))
    with pytest.raises(ConfigError, match=r"GPT2LMHeadModel.*LlamaForCausalLM"):
        export_gguf(trained_adapter, tmp_path / "out.gguf", basemodel=str(base))


def test_refuses_a_base_gguf_of_other_shapes(trained_adapter, tmp_path):
    """A GGUF base whose q tensor has another width: refused before llama-server would fail to load it."""
    other = tmp_path / "other.gguf"
    writer = GGUFWriter(other, "llama")
    for key, value in (("block_count", 30), ("attention.head_count", 9), ("attention.head_count_kv", 3)):
        writer.add_uint32(f"llama.{key}", value)
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(AdapterError, match="trained on another model"):
        export_gguf(trained_adapter, tmp_path / "out.gguf", basemodel=str(other))


def test_never_overwrites_without_flag_and_replaces_atomically(trained_adapter, tmp_path, monkeypatch):
    out = tmp_path / "engine.gguf"
    out.write_bytes(b"earlier")
    with pytest.raises(AdapterError, match=r"^overwrite is needed") as refused:
        export_gguf(trained_adapter, out)
    assert refused.value.option == "overwrite"  # the CLI shows --overwrite
    assert out.read_bytes() == b"earlier"

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(AdapterError, match="earlier file there is kept"):
        export_gguf(trained_adapter, out, overwrite=True)
    assert out.read_bytes() == b"earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["engine.gguf"]
    monkeypatch.undo()
    export_gguf(trained_adapter, out, overwrite=True)
    assert out.read_bytes()[:4] == b"GGUF"


def test_refuses_a_directory_or_another_suffix(trained_adapter, tmp_path):
    (tmp_path / "dir.gguf").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        export_gguf(trained_adapter, tmp_path / "dir.gguf", overwrite=True)
    with pytest.raises(ConfigError, match=r"must end in \.gguf"):
        export_gguf(trained_adapter, tmp_path / "engine.bin")


def test_cli_exports_and_says_how_to_serve(trained_adapter, tmp_path):
    out = tmp_path / "engine.gguf"
    runner = CliRunner()
    result = runner.invoke(app, ["alora", "export", str(trained_adapter), "--outfile", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout and "--lora-init-without-apply" in result.output
    assert GGUFReader(out).fields["general.type"].contents() == "adapter"
    ids = AdapterInfo.read(trained_adapter).prompt["invocation_ids"]
    assert fields(out)["adapter.alora.invocation_tokens"][0] == ids[1:]  # for llama-server by default
    same = tmp_path / "same.gguf"
    flag = runner.invoke(
        app, ["alora", "export", str(trained_adapter), "--outfile", str(same), "--same-as-converter"]
    )
    assert flag.exit_code == 0, flag.output
    assert fields(same)["adapter.alora.invocation_tokens"][0] == ids
    again = runner.invoke(app, ["alora", "export", str(trained_adapter), "--outfile", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output
    bad = runner.invoke(app, ["alora", "export", str(trained_adapter), "--outfile", str(tmp_path / "x.bin")])
    assert bad.exit_code == 2 and "--outfile" in bad.output


# llama-server: found (after checking it serves aLoRA) or built once into the cache.


def test_probe_adapter_carries_invocation_tokens(tmp_path):
    from validora.core.models import embedded_gguf_path

    meta = fields(server.write_probe_adapter(embedded_gguf_path(), tmp_path / "probe.gguf"))
    assert meta["adapter.alora.invocation_tokens"][0] == server.PROBE_TOKENS
    assert meta["general.type"][0] == "adapter" and meta["general.architecture"][0] == "llama"


def test_server_named_by_env_must_exist_and_serve_alora(tmp_path, monkeypatch):
    monkeypatch.setenv(build.SERVER_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="not an executable file"):
        build.find_server()
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'no such option' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv(build.SERVER_ENV, str(fake))
    with pytest.raises(build.LlamaCppError, match="does not serve aLoRA"):
        build.find_server()


def test_a_finished_build_is_reused_and_a_wrong_sdist_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("VALIDORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(build.SERVER_ENV, raising=False)
    import tarfile

    sdist = tmp_path / "llama_cpp_python-0.0.1.tar.gz"
    changelog = tmp_path / "CHANGELOG.md"
    changelog.write_text("## [0.0.1]\n- feat: update llama.cpp to ggml-org/llama.cpp@abc\n")
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(changelog, f"llama_cpp_python-{build.LLAMA_CPP_PYTHON}/CHANGELOG.md")
    monkeypatch.setenv(build.SDIST_ENV, str(sdist))
    with pytest.raises(build.LlamaCppError, match="is not llama-cpp-python"):
        build.fetch_sources(say=lambda line: None)
    assert not build.source_tree().exists()

    binary = build.home() / "bin" / "llama-server"
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    assert build.cached_server() is None  # no build.json: an unfinished build is not used
    info = build.home() / build.BUILD_INFO
    info.write_text(json.dumps({"commit": build.LLAMA_CPP_COMMIT, "cmake_flags": ["-DGGML_NATIVE=ON"]}))
    assert build.cached_server() is None  # built with other flags (AMX on): rebuilt, not reused
    info.write_text(json.dumps({"commit": build.LLAMA_CPP_COMMIT, "cmake_flags": build.cmake_flags()}))
    assert build.build(say=lambda line: None) == binary  # nothing downloaded or compiled


def test_built_server_serves_alora_adapters(llama_server):
    assert server.supports_alora(llama_server)
    assert "-DGGML_AMX_INT8=ON" not in build.cmake_flags()


def test_shifted_invocation_drops_only_the_first_token(trained_adapter, exported, tmp_path):
    """For llama-server, which switches an aLoRA on one token before its match (measured: the server's
    label probabilities then follow PEFT's with the adapter one token early)."""
    ids = AdapterInfo.read(trained_adapter).prompt["invocation_ids"]
    shifted = export_gguf(trained_adapter, tmp_path / "shifted.gguf")  # the default: for llama-server
    assert fields(shifted)["adapter.alora.invocation_tokens"][0] == ids[1:]
    assert fields(shifted)["adapter.lora.task_name"][0] == served_name(trained_adapter)
    assert served_name(trained_adapter) == "validora:" + adapter_digest(trained_adapter)[:16]
    assert "adapter.lora.task_name" not in fields(exported)  # the converter writes none
    same = {t.name: t.data for t in GGUFReader(exported).tensors}
    assert all(np.array_equal(same[t.name], t.data) for t in GGUFReader(shifted).tensors)
    one = copy_adapter(
        trained_adapter, tmp_path / "one", config={"alora_invocation_tokens": ids[:1]},
        info={"prompt": {**AdapterInfo.read(trained_adapter).prompt, "invocation_ids": ids[:1]}},
    )  # fmt: skip
    with pytest.raises(ConfigError, match="one-token invocation"):
        export_gguf(one, tmp_path / "one.gguf")
