"""`m alora import`: PEFT adapters written without validora (another tool's training, an intrinsics
folder with an io.yaml) become validora adapters, and score exactly as the PEFT model itself does."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from validora import ChatContext, CustomIntrinsicAdapter, LocalHFBackend, Session, req
from validora.cli import app
from validora.core.prompting import PromptFormat, derive_invocation_prompt

from ..conftest import LABELS, engine_rows, write_jsonl
from ..core.test_prompting import full_ids

TEXTS = [
    "High vibration at 3100 RPM, connecting rod suspected.",
    "Engine runs smoothly at all speeds; routine inspection found nothing.",
    "Blue smoke at start-up and oil consumption up by a litre a week.",
]
EVAL_ROWS = engine_rows(1)
ITEMS = [*TEXTS, *(r["item"] for r in EVAL_ROWS)]
SEED_REQ = "The failure mode must not be 'no_failure'."
IO_YAML = f"""\
model: null
response_format: |
  {json.dumps({"type": "string", "enum": LABELS})}
transformations: null
parameters:
  max_completion_tokens: 8
"""


def m(*args: object):
    return CliRunner().invoke(app, ["alora", *map(str, args)])


def direct_probs(peft, fmt: PromptFormat, text: str) -> dict[str, float]:
    """The label probabilities from the PEFT model's own forward over each full sequence (PEFT finds
    the aLoRA invocation in the ids itself): no shared prefix, no packing, no validora scoring."""
    lls = []
    for label in fmt.labels:
        ids = full_ids(fmt, text, label)
        n = len(fmt.label_ids[label])
        with torch.no_grad():
            logits = peft(input_ids=torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits[-n - 1 : -1], dim=-1)
        lls.append(float(logp.gather(1, torch.tensor(ids[-n:])[:, None]).sum()))
    probs = torch.softmax(torch.tensor(lls), dim=0)
    return dict(zip(fmt.labels, map(float, probs), strict=True))


@pytest.fixture(scope="module")
def written(fresh_model, tmp_path_factory):
    """An aLoRA and a LoRA adapter saved by PEFT alone on the embedded model (lora_B seeded non-zero),
    and the label probabilities each gives TEXTS by a direct PEFT forward, and the base model's."""
    from peft import LoraConfig, get_peft_model

    loaded = fresh_model()
    tokenizer = loaded.tokenizer
    fmt = PromptFormat(tokenizer, LABELS)
    root = tmp_path_factory.mktemp("peft")
    with torch.no_grad():
        base = {t: direct_probs(loaded.model, fmt, t) for t in TEXTS[:2]}
    out: dict[str, object] = {"base": base, "fmt": fmt}
    model = loaded.model
    for kind, tokens in (("alora", fmt.invocation_ids), ("lora", None)):
        torch.manual_seed(7)
        config = LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
            alora_invocation_tokens=tokens,
        )  # fmt: skip
        peft = get_peft_model(model, config)
        with torch.no_grad():
            for name, param in peft.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.5)
        peft.save_pretrained(str(root / kind))
        out[kind] = root / kind
        texts = ITEMS if kind == "alora" else TEXTS[1:2]  # (direct forwards are slow on two cores)
        out[f"{kind}_probs"] = {t: direct_probs(peft, fmt, t) for t in texts}
        model = peft.unload()
    return out


def close(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal probabilities, and equal log-probabilities too: the base model's are near 0 or 1."""
    logs = [abs(math.log(a[k] + 1e-15) - math.log(b[k] + 1e-15)) for k in a]
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-4 for k in a) and max(logs) <= 1e-2


def test_peft_adapters_change_the_scores(written):
    """The checks below compare real adapters: each moves the label log-probabilities far off the
    base model's, and the aLoRA changes the most probable label of the first text."""
    for kind in ("alora", "lora"):
        got, base = written[f"{kind}_probs"], written["base"]
        moved = max(abs(math.log(got[t][k]) - math.log(base[t][k])) for t in got if t in base for k in LABELS)
        assert moved > 1.0, kind
    first, base = written["alora_probs"][TEXTS[0]], written["base"][TEXTS[0]]
    assert max(first, key=first.get) != max(base, key=base.get)


@pytest.fixture(scope="module")
def imported(written, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "engine"
    result = m("import", written["alora"], "--labels", ",".join(LABELS), "--outfile", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    return out


def test_import_writes_a_validora_adapter_beside_untouched_peft_files(written, imported):
    source = written["alora"]
    assert sorted(p.name for p in source.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
        assert (imported / name).read_bytes() == (source / name).read_bytes()
    info = json.loads((imported / "validora.json").read_text())
    fmt = written["fmt"]
    assert info["adapter_type"] == "alora" and info["base_model"] == "smollm2-135m-instruct"
    assert info["labels"] == LABELS and info["prompt"] == fmt.describe()
    assert info["training"]["labels_from"] == "labels"  # a plain word, never a CLI flag
    assert info["prompt"]["invocation_prompt"] == derive_invocation_prompt(fmt.tokenizer)
    assert info["temperature"] == 1.0 and info["lexical"] is None and info["metrics"] == {}
    assert info["requirements"] is False
    assert info["training"]["imported_from"] == "alora" and info["training"]["r"] == 8


def test_imported_adapter_predicts_as_the_peft_model_does(written, imported):
    result = m("predict", imported, *TEXTS, "--jsonl", "--device", "cpu")
    assert result.exit_code == 0, result.output
    got = [json.loads(line) for line in result.stdout.splitlines()]
    for row, text in zip(got, TEXTS, strict=True):
        assert close(row["probs"], written["alora_probs"][text]), (row, written["alora_probs"][text])


def test_imported_adapter_evaluates(written, imported, tmp_path):
    data = write_jsonl(tmp_path / "eval.jsonl", EVAL_ROWS)
    result = m("eval", imported, data, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    # The PEFT model's own predictions on the same items give the same accuracy.
    direct = [written["alora_probs"][r["item"]] for r in EVAL_ROWS]
    right = [max(p, key=p.get) == r["label"] for p, r in zip(direct, EVAL_ROWS, strict=True)]
    assert metrics["accuracy"] == pytest.approx(sum(right) / len(right))
    assert metrics["temperature"] == 1.0


def test_imported_adapter_checks_in_a_program(written, imported):
    backend = LocalHFBackend(device="cpu")
    backend.add_adapter(CustomIntrinsicAdapter(model_id=str(imported)))
    session = Session(backend, ctx=ChatContext())
    (v,) = session.validate([req(SEED_REQ)], output=TEXTS[0])
    assert v.adapter == "engine"
    assert close(v.probs, written["alora_probs"][TEXTS[0]])
    assert v.score == pytest.approx(1 - v.probs["no_failure"], abs=1e-6)
    assert v.passed == (v.score >= 0.5)


def test_lora_adapter_imports_as_lora_and_scores_as_peft(written, tmp_path):
    out = tmp_path / "plain"
    result = m("import", written["lora"], "--labels", ",".join(LABELS), "--outfile", out)
    assert result.exit_code == 0, result.output
    info = json.loads((out / "validora.json").read_text())
    assert info["adapter_type"] == "lora"
    got = m("predict", out, TEXTS[1], "--jsonl", "--device", "cpu")
    assert got.exit_code == 0, got.output
    assert close(json.loads(got.stdout)["probs"], written["lora_probs"][TEXTS[1]])


def intrinsic_folder(written, tmp_path: Path) -> Path:
    """The adapter as an intrinsics repository holds it: <name>/<base>/alora/ with an io.yaml."""
    folder = tmp_path / "repo" / "engine_check" / "SmolLM2-135M-Instruct" / "alora"
    shutil.copytree(written["alora"], folder)
    (folder / "io.yaml").write_text(IO_YAML)
    return folder


def test_intrinsics_folder_in_place_takes_labels_from_io_yaml(written, tmp_path):
    folder = intrinsic_folder(written, tmp_path)
    (folder / "notes.txt").write_text("mine")
    (folder / "training_args.bin").write_bytes(b"pickle")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    refused = m("import", folder)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert not (folder / "validora.json").exists()
    result = m("import", folder, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "from " in result.output and "io.yaml" in result.output
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert {k: v for k, v in after.items() if k != "validora.json"} == before  # every file kept as it was
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging left
    info = json.loads(after["validora.json"])
    assert info["labels"] == LABELS
    assert info["training"]["imported_from"] == "engine_check/SmolLM2-135M-Instruct/alora"
    adapter = CustomIntrinsicAdapter(model_id=str(tmp_path / "repo"))  # found in the intrinsics layout
    assert adapter.name == "engine_check" and adapter.labels == LABELS
    again = m("import", folder, "--overwrite")
    assert again.exit_code == 2 and "already a validora adapter" in again.output


def test_outfile_copy_leaves_the_source_alone_and_skips_pickles(written, tmp_path):
    folder = intrinsic_folder(written, tmp_path)
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "checkpoint-10").mkdir()
    before = sorted(p.name for p in folder.iterdir())
    out = tmp_path / "copy"
    result = m("import", folder, "--labels", ",".join(reversed(LABELS)), "--outfile", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == before
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "io.yaml", "validora.json",
    ]  # fmt: skip
    assert "training_args.bin" in result.output and "checkpoint-10/" in result.output
    assert json.loads((out / "validora.json").read_text())["labels"] == list(reversed(LABELS))
    exists = m("import", folder, "--outfile", out)
    assert exists.exit_code == 2 and "--overwrite" in exists.output
    replaced = m("import", folder, "--outfile", out, "--overwrite", "--requirements")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / "validora.json").read_text())["requirements"] is True


def test_invocation_mismatch_shows_both_prompts(written, tmp_path):
    other = "<|im_start|>judge\n"
    result = m("import", written["alora"], "--labels", ",".join(LABELS), "--outfile", tmp_path / "o",
               "--invocation-prompt", other)  # fmt: skip
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert json.dumps(derive_invocation_prompt(written["fmt"].tokenizer)) in text  # decoded stored tokens
    assert json.dumps(other) in text and "--invocation-prompt" in text
    assert not (tmp_path / "o").exists()
    # The reverse: an adapter trained with another invocation, imported with the derived one.
    source = tmp_path / "judge"
    shutil.copytree(written["alora"], source)
    config = json.loads((source / "adapter_config.json").read_text())
    ids = written["fmt"].tokenizer(other, add_special_tokens=False)["input_ids"]
    (source / "adapter_config.json").write_text(json.dumps({**config, "alora_invocation_tokens": ids}))
    derived = m("import", source, "--labels", ",".join(LABELS), "--outfile", tmp_path / "o")
    assert derived.exit_code == 2
    assert f"--invocation-prompt {json.dumps(other)}" in " ".join(derived.output.split())
    fixed = m("import", source, "--labels", ",".join(LABELS), "--outfile", tmp_path / "o",
              "--invocation-prompt", other)  # fmt: skip
    assert fixed.exit_code == 0, fixed.output
    assert json.loads((tmp_path / "o" / "validora.json").read_text())["prompt"]["invocation_prompt"] == other


def broken(written, tmp_path: Path, change) -> Path:
    source = tmp_path / "src"
    shutil.copytree(written["alora"], source)
    change(source)
    return source


def _config(**changes):
    def change(source: Path) -> None:
        path = source / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return change


def _io_yaml(text: str):
    return lambda source: (source / "io.yaml").write_text(text)


def _pickled(source: Path) -> None:
    (source / "adapter_model.safetensors").rename(source / "adapter_model.bin")


LABEL_ARGS = ["--labels", ",".join(LABELS)]
BAD_INPUT = [
    ("no config", lambda s: (s / "adapter_config.json").unlink(), LABEL_ARGS, "has no adapter_config.json"),
    ("pickled weights", _pickled, LABEL_ARGS, "only adapter_model.bin"),
    ("no labels", lambda s: None, [], "--labels a,b,c"),
    ("one label", lambda s: None, ["--labels", "a"], "at least two labels"),
    ("duplicate labels", lambda s: None, ["--labels", "a,b,a"], "repeats 'a'"),
    ("empty label", lambda s: None, ["--labels", "a,,b"], "empty entry"),
    ("io.yaml without enum", _io_yaml('model: null\nresponse_format: \'{"type": "string"}\'\n'), [], "no 'enum'"),
    ("io.yaml other labels", _io_yaml(IO_YAML), ["--labels", "yes,no"], "differ from the labels"),
    ("structured answer", _io_yaml(f"response_format: '{json.dumps({'type': 'object', 'properties': {'x': {'enum': LABELS}}})}'\n"), [], "structured answer"),
    ("prefix tuning", _config(peft_type="PREFIX_TUNING"), LABEL_ARGS, "LoRA and aLoRA adapters"),
    ("uncached hub model", _config(base_model_name_or_path="nobody/not-cached-model"), LABEL_ARGS, "--basemodel is needed"),
    ("missing base dir", lambda s: None, [*LABEL_ARGS, "--basemodel", "/nonexistent/model"], "/nonexistent/model"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "args", "message"), [b[1:] for b in BAD_INPUT], ids=[b[0] for b in BAD_INPUT]
)
def test_bad_input_exits_2_and_changes_nothing(written, tmp_path, change, args, message):
    source = broken(written, tmp_path, change)
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    for where in (["--outfile", tmp_path / "out"], ["--overwrite"]):
        result = m("import", source, *args, *where)
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()), result.output
        assert {p.name: p.read_bytes() for p in source.iterdir()} == before
        assert not (tmp_path / "out").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("labels", [LABELS, ["'q\"", "a: b", "é", "😀", "a\u2028b", "# x"]])
def test_labels_from_reads_back_a_generated_io_yaml(tmp_path, labels):
    from validora.adapter import ioyaml
    from validora.adapter.schema import AdapterInfo

    info = AdapterInfo(
        adapter_type="alora", base_model="org/m", labels=labels, prompt={"invocation_prompt": "<|x|>"}
    )
    path = tmp_path / "io.yaml"
    path.write_text(ioyaml.generate(info), encoding="utf-8")
    assert ioyaml.labels_from(path) == labels


def test_adopting_a_directory_keeps_every_entry(tmp_path):
    """In place, the atomic writer copies whatever the block did not write: folders and links included."""
    from validora.adapter import saving
    from validora.errors import AdapterError

    target = tmp_path / "peft"
    (target / "checkpoint-1").mkdir(parents=True)
    (target / "checkpoint-1" / "state.json").write_text("{}")
    (target / "adapter_config.json").write_text("{}")
    (target / "adapter_model.safetensors").write_bytes(b"w")
    (target / "link").symlink_to("adapter_model.safetensors")
    with pytest.raises(AdapterError, match="not a validora adapter"):
        saving.check_target(target, overwrite=True)  # without adopt, a PEFT directory is not replaced
    with saving.staged_directory(target, overwrite=True, adopt=True) as staging:
        (staging / "validora.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "checkpoint-1", "link", "validora.json",
    ]  # fmt: skip
    assert (target / "checkpoint-1" / "state.json").read_text() == "{}"
    assert (target / "link").is_symlink() and (target / "link").read_bytes() == b"w"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peft"]


def test_model_card_of_an_imported_adapter_claims_no_training_or_metrics(imported):
    from validora.adapter.card import model_card
    from validora.adapter.schema import AdapterInfo

    card = model_card(AdapterInfo.read(imported), {})
    assert "trained with another tool and imported" in card
    assert "m alora eval" in card
    assert "Accuracy **" not in card and "Training examples" not in card
