"""Training: prefix-cached aLoRA equals the full forward; the run is reproducible; the output is safe."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from validora.adapter.schema import WRITTEN_FILES, AdapterInfo
from validora.cli import app
from validora.train.recipe import DEFAULT_TARGETS
from validora.train.trainer import Recipe, TrainConfig, Trainer

from ..conftest import ROOT, engine_rows, read_until, write_jsonl

runner = CliRunner()


def make_trainer(fresh_model, data: Path, overwrite: bool = False, cache_memory_gb: float = 4.0, **overrides) -> Trainer:  # fmt: skip
    recipe = Recipe(**{"dropout": 0.0, **overrides})
    config = TrainConfig(
        datafile=str(data),
        outfile=str(data.parent / "never"),
        device="cpu",
        overwrite=overwrite,
        cache_memory_gb=cache_memory_gb,
        recipe=recipe,
    )
    trainer = Trainer(config, loaded=fresh_model())
    trainer.setup()
    return trainer


def grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {
        n: p.grad.clone()
        for n, p in trainer.peft.named_parameters()
        if p.requires_grad and p.grad is not None
    }


def peft_own_nll(trainer: Trainer, batch: list) -> float:
    """The gold label tokens' mean NLL by PEFT's own forward: whole prompt in, aLoRA offsets its own."""
    nll, count = 0.0, 0
    for e in batch:
        ids = [*e.prefix, *trainer.fmt.invocation_ids, *trainer.fmt.label_ids[e.label]]
        n = len(trainer.fmt.label_ids[e.label])
        with torch.no_grad():
            logp = trainer.peft(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        nll -= sum(float(logp[len(ids) - n - 1 + j, ids[len(ids) - n + j]]) for j in range(n))
        count += n
    return nll / count


def test_prefix_cached_loss_and_gradients_equal_the_full_forward(fresh_model, small_data):
    # The forward is chosen by the config: prefix_cache off is the plain full-sequence forward, the
    # adapter active from the invocation on. Same seed, so both start from the same adapter weights.
    trainer, full_trainer = (
        make_trainer(fresh_model, small_data, rank=8, prefix_cache=cached) for cached in (True, False)
    )
    for t in (trainer, full_trainer):
        # Give B non-zero values so gradients reach A as well.
        torch.manual_seed(0)
        for name, p in t.peft.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.02)
        t.model.train()
    weights = dict(full_trainer.peft.named_parameters())
    assert all(torch.equal(p, weights[n]) for n, p in trainer.peft.named_parameters())
    with pytest.raises(AttributeError):
        trainer.uses_cache = False  # type: ignore[misc]  # the recipe's
    keys = [0, 1, 2, 3, 4]
    batch = [trainer.train_enc[k] for k in keys]
    assert trainer.uses_cache and trainer.prefixes.kept
    assert not full_trainer.uses_cache and not full_trainer.prefixes.kept
    cached, cached_nll, n_cached = trainer.loss_step(keys, batch)
    cached.backward()
    g_cached = grads(trainer)
    full, _, n_full = full_trainer.loss_step(keys, [full_trainer.train_enc[k] for k in keys])
    full.backward()
    g_full = grads(full_trainer)
    assert n_cached == n_full
    assert torch.allclose(cached, full, atol=1e-5), (cached, full)
    assert (
        g_cached.keys() == g_full.keys() and len(g_full) == 2 * 7 * 30
    )  # A and B of 7 projections in 30 layers
    for name in g_full:
        assert torch.allclose(g_cached[name], g_full[name], rtol=1e-3, atol=1e-6), name
    assert max(g.abs().max() for g in g_full.values()) > 0
    # And both equal PEFT's own computation: the whole prompt in, aLoRA offsets found by PEFT itself.
    assert peft_own_nll(trainer, batch) == pytest.approx(cached_nll, abs=1e-4)  # the objective adds smoothing


def test_two_seeded_runs_give_the_same_losses_and_the_loss_falls(fresh_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", engine_rows(5))
    losses = []
    for _ in range(2):
        trainer = make_trainer(fresh_model, data, epochs=2, seed=7)
        report = trainer.train()
        losses.append([e.train_loss for e in report.epochs])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert losses[0][1] < losses[0][0]


# The recipe's numbers on a tiny fixed run (see the test below). Re-pinned when the default adapter
# grew from q,k,v to all seven projections, and again when label smoothing 0.1 became the default
# (issue 8: the quality recipe).
PINNED_SETUP = {"rank": 4, "epochs": 2, "seed": 0, "batch_size": 2, "warmup_fraction": 0.5, "dropout": 0.05}
PINNED_TRAIN_LOSSES = [6.594678, 5.263348]  # the gold tokens' plain NLL, as reported
PINNED_VAL_LOSSES = [5.6799658, 4.4557962]
PINNED_LRS = [1e-3, 2e-3, 2e-3, 1e-3]  # 2 warm-up updates, then linear decay to zero over the other 2


@pytest.mark.parametrize("forward", ["kept caches", "per-batch caches", "full forward"])
def test_the_recipe_reproduces_its_pinned_losses_and_schedule(fresh_model, tmp_path, forward):
    """As torchtune pins its recipes' losses: a change to the data order, initialisation, forward, loss or
    schedule moves these numbers. When that is the intent, re-pin them in the same commit and say why.

    The three ways to the loss (prefix caches kept, recomputed per batch, or none) give the same numbers.
    """
    data = write_jsonl(tmp_path / "d.jsonl", engine_rows(2))  # 4 training and 4 validation items
    modes = {
        "kept caches": {},
        "per-batch caches": {"cache_memory_gb": 0.0},
        "full forward": {"prefix_cache": False},
    }
    trainer = make_trainer(fresh_model, data, **PINNED_SETUP, **modes[forward])
    assert trainer.uses_cache == (forward != "full forward")
    assert trainer.prefixes.kept == (forward == "kept caches")
    lrs = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step  # type: ignore[method-assign]
    report = trainer.train()
    assert lrs == PINNED_LRS  # exactly: the optimizer sees the same rates as the hand-applied schedule did
    assert [e.train_loss for e in report.epochs] == pytest.approx(PINNED_TRAIN_LOSSES, rel=1e-4)
    assert [e.val_loss for e in report.epochs] == pytest.approx(PINNED_VAL_LOSSES, rel=1e-4)


def test_the_prefix_store_keeps_each_split_apart_and_joins_what_it_would_compute(fresh_model, tmp_path):
    from validora.train.prefix_store import PrefixStore

    data = write_jsonl(tmp_path / "d.jsonl", engine_rows(2))
    trainer = make_trainer(fresh_model, data, rank=4)
    kept = trainer.prefixes
    assert kept.kept and len(kept) == 8
    assert kept.tokens == sum(len(e.prefix) for e in (*trainer.train_enc, *trainer.val_enc))
    assert kept.fits(kept.need_gb()) and not kept.fits(kept.need_gb() / 2)
    fresh = PrefixStore(trainer.peft, kept.prefixes, trainer.fmt.pad_id, trainer.device)
    assert not fresh.kept
    for split, encoded in (("val", trainer.val_enc), ("train", trainer.train_enc)):
        joined, computed = kept.get(split, [3, 0]), fresh.get(split, [3, 0])
        lengths = [len(encoded[3].prefix), len(encoded[0].prefix)]
        assert joined.lengths.tolist() == computed.lengths.tolist() == lengths
        assert torch.equal(joined.mask, computed.mask)
        real = joined.mask[:, None, :, None].bool()  # padding columns hold whatever; only real ones count
        for a, b in zip(joined.cache.layers, computed.cache.layers, strict=True):
            assert torch.allclose(a.keys * real, b.keys * real, atol=1e-4)
            assert torch.allclose(a.values * real, b.values * real, atol=1e-4)


def test_train_cli_writes_a_complete_adapter(trained_adapter: Path, small_data: Path):
    names = {p.name for p in trained_adapter.iterdir()}
    assert names == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "validora.json",
        "metrics.json",
        "training_curves.png",
        "confusion_matrix.png",
        "reliability_diagram.png",
        "README.md",
        "lexical.safetensors",
    }
    assert names == WRITTEN_FILES  # --overwrite keeps every other file as the user's: the list must be whole
    info = AdapterInfo.read(trained_adapter)
    assert info.adapter_type == "alora" and info.base_model == "smollm2-135m-instruct"
    assert sorted(info.labels) == sorted({r["label"] for r in engine_rows(1)})
    peft_config = json.loads((trained_adapter / "adapter_config.json").read_text())
    assert peft_config["alora_invocation_tokens"] == info.prompt["invocation_ids"]
    assert peft_config["r"] == 8 and sorted(peft_config["target_modules"]) == sorted(DEFAULT_TARGETS)
    metrics = json.loads((trained_adapter / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and metrics["n_val"] == 8 and metrics["n_train"] == 24
    assert {"val_loss", "val_accuracy", "val_macro_f1"} <= metrics["epochs"][0].keys()
    assert 0.05 <= metrics["temperature"] <= 20 and 0 <= metrics["val_ece"] <= 1
    assert info.temperature == metrics["temperature"] and info.metrics["val_ece"] == metrics["val_ece"]
    assert (trained_adapter / "reliability_diagram.png").read_bytes().startswith(b"\x89PNG")
    assert len(metrics["metrics"]["confusion"]) == 4
    card = (trained_adapter / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n")
    assert "confusion_matrix.png" in card and "memorise" in card
    # Nothing but the adapter was created beside the data or the output.
    assert sorted(p.name for p in trained_adapter.parent.iterdir()) == ["engine"]
    assert sorted(p.name for p in small_data.parent.iterdir()) == ["small.jsonl"]


# validora.json's "training" object: the recipe (what shapes the weights), the epochs it resolved and the
# split sizes, as one flat object. No path (data, output, prompt file, base model) and no execution knob
# (device, cache budget, overwrite, remote code): those are the run's, not the adapter's.
TRAINING_KEYS = {
    "adapter", "epochs", "learning_rate", "batch_size", "grad_accum", "max_length", "seed", "val_fraction",
    "rank", "alpha", "dropout", "label_smoothing", "lexical_weight", "target_modules", "warmup_fraction",
    "early_stop", "prefix_cache", "eval_batch_size", "n_train", "n_val",
}  # fmt: skip
# What adapters written before the split also stored there: they load as before.
EARLIER_KEYS = {"datafile", "outfile", "basemodel", "device", "promptfile", "overwrite", "trust_remote_code", "cache_memory_gb"}  # fmt: skip


def test_validora_json_stores_the_recipe_as_one_flat_object(trained_adapter: Path):
    training = AdapterInfo.read(trained_adapter).training
    assert set(training) == TRAINING_KEYS
    assert training["rank"] == 8 and training["epochs"] == 2 and training["seed"] == 1
    assert training["target_modules"] == list(DEFAULT_TARGETS)


def test_an_earlier_training_block_with_paths_and_knobs_still_loads(
    trained_adapter: Path, tmp_path, fresh_model
):
    from validora.backends.validator import load_validator

    adapter = Path(shutil.copytree(trained_adapter, tmp_path / "earlier"))
    info = json.loads((adapter / "validora.json").read_text())
    earlier = {"datafile": "/home/me/data/d.jsonl", "outfile": str(adapter), "basemodel": None, "device": "cpu",
               "promptfile": None, "overwrite": False, "trust_remote_code": False, "cache_memory_gb": 4.0}  # fmt: skip
    assert set(earlier) == EARLIER_KEYS
    info["training"] = {**earlier, **info["training"]}
    (adapter / "validora.json").write_text(json.dumps(info))
    assert AdapterInfo.read(adapter).training["datafile"] == "/home/me/data/d.jsonl"
    texts = ["rod knock", "new plug, runs fine"]
    got, want = (load_validator(d, loaded=fresh_model()).predict(texts) for d in (adapter, trained_adapter))
    assert [s.probs for s in got] == [s.probs for s in want]


def test_saved_adapter_reproduces_in_memory_predictions(fresh_model, tmp_path):
    from validora.backends.validator import load_validator

    data = write_jsonl(tmp_path / "d.jsonl", engine_rows(4))
    trainer = make_trainer(fresh_model, data, epochs=1)
    trainer.train()
    target = trainer.save(tmp_path / "adapter")
    texts = ["rod knock", "blue smoke and oil burning", "new plug, runs fine"]
    from validora.score.scoring import score_items

    before = score_items(trainer.peft, trainer.fmt, texts, readout=trainer.readout)
    assert AdapterInfo.read(target).temperature == trainer.report.temperature != 1.0
    after = load_validator(target, loaded=fresh_model()).predict(texts)
    for a, b in zip(before, after, strict=True):
        assert a.probs == pytest.approx(b.probs, abs=1e-5)


def test_existing_output_is_kept_unless_overwrite(trained_adapter: Path, small_data: Path, tmp_path: Path):
    before = (trained_adapter / "adapter_model.safetensors").read_bytes()
    result = runner.invoke(
        app, ["alora", "train", str(small_data), "--outfile", str(trained_adapter), "--epochs", "1"]
    )
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert (trained_adapter / "adapter_model.safetensors").read_bytes() == before
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("do not delete")
    result = runner.invoke(
        app, ["alora", "train", str(small_data), "--outfile", str(precious), "--epochs", "1", "--overwrite"]
    )
    assert result.exit_code == 1 and "not a validora adapter" in result.output
    assert (precious / "notes.txt").read_text() == "do not delete"


def test_bad_data_exits_2_names_lines_and_writes_nothing(tmp_path: Path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"item": "a", "label": "x"}\n{"item": "b"}\nnot json\n')
    out = tmp_path / "out"
    result = runner.invoke(app, ["alora", "train", str(data), "--outfile", str(out)])
    assert result.exit_code == 2
    assert f"{data}:2: missing field" in result.output and f"{data}:3: invalid JSON" in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_failure_while_saving_leaves_the_earlier_adapter(fresh_model, tmp_path, monkeypatch):
    from validora.adapter import card

    data = write_jsonl(tmp_path / "d.jsonl", engine_rows(3))
    target = tmp_path / "adapter"
    trainer = make_trainer(fresh_model, data, epochs=1, overwrite=True)
    trainer.train()
    trainer.save(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(card, "model_card", explode)  # the last file written
    with pytest.raises(KeyboardInterrupt):
        trainer.save(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "d.jsonl"]  # no staging left behind


def test_interrupting_a_real_run_keeps_the_earlier_adapter(trained_adapter: Path, tmp_path: Path):
    """Ctrl-C (SIGINT) during training: exit 130, the adapter at --outfile untouched."""
    data = write_jsonl(tmp_path / "d.jsonl", engine_rows(20))
    target = tmp_path / "adapter"
    import shutil

    shutil.copytree(trained_adapter, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "validora.cli", "alora", "train", str(data), "--outfile", str(target), "--overwrite",
         "--device", "cpu", "--epochs", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT, text=True,
        # A background job (`make test &`, nohup) inherits SIGINT ignored, and Python then keeps it
        # ignored: start the child with the default disposition, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    output = read_until(proc, "Prefix caches")
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    output += rest
    assert proc.returncode == 130, output
    assert "Interrupted" in output
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "d.jsonl"]


def test_default_epochs_scale_with_the_data_size():
    """Without --epochs, small sets get more passes (250 updates), within 6 to 20; a given value wins."""
    from validora.train.recipe import resolve_epochs

    assert resolve_epochs(None, 51) == 6  # 504 engine notes: 51 updates per epoch
    assert resolve_epochs(None, 27) == 10  # 211 notes
    assert resolve_epochs(None, 2) == 20  # a tiny set is capped
    assert resolve_epochs(3, 2) == 3


def test_label_smoothing_mixes_the_vocabulary_mean_into_the_objective_not_into_the_reported_loss(
    fresh_model, tmp_path
):
    data = write_jsonl(tmp_path / "d.jsonl", engine_rows(2))
    trainer = make_trainer(fresh_model, data, rank=4, epochs=1, label_smoothing=0.0)
    trainer.model.eval()
    keys = [0, 1, 2, 3]
    batch = [trainer.train_enc[k] for k in keys]
    with torch.no_grad():
        plain = trainer.loss_step(keys, batch)
        trainer.recipe = Recipe(**{**vars(trainer.recipe), "label_smoothing": 0.25})
        smoothed = trainer.loss_step(keys, batch)
    assert float(plain.objective) == pytest.approx(plain.nll, abs=1e-6)
    assert smoothed.nll == pytest.approx(plain.nll, abs=1e-6) and smoothed.tokens == plain.tokens
    # objective = 0.75 NLL + 0.25 S, S the mean over the vocabulary of -log p; by Jensen S >= log V
    spread = (float(smoothed.objective) - 0.75 * plain.nll) / 0.25
    vocab = trainer.peft.get_output_embeddings().weight.shape[0]
    assert spread >= math.log(vocab) - 1e-3
    assert spread < 100  # a mean of log-probabilities, not a sum over the vocabulary


@pytest.mark.parametrize("value", [1.0, -0.1, float("nan")])
def test_label_smoothing_outside_zero_to_one_is_refused(value):
    from validora.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^label_smoothing "):
        Recipe(label_smoothing=value)
