"""The lexical half of a validator: fitted, stored without pickle, and applied wherever labels are scored."""

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from validora.adapter.loading import CustomIntrinsicAdapter
from validora.adapter.schema import LEXICAL_FILE, AdapterInfo
from validora.backends.huggingface import LocalHFBackend
from validora.backends.validator import load_validator
from validora.cli import app
from validora.core.calibration import fit_temperature
from validora.errors import AdapterError, ConfigError
from validora.score.lexical import C_GRID, KINDS, LexicalModel, fit_lexical, lexical_text
from validora.score.readout import Readout
from validora.score.scoring import score_items
from validora.train.recipe import Recipe

TEXTS = [
    "oil smoke blue exhaust", "burns oil and smokes", "blue smoke at startup", "smoke and oil burning",
    "knock at high rpm", "metal knock in the crankcase", "loud knock under load", "rod knock heard",
    "idle surges and stalls", "fuel leak at the bowl", "carburetor floods fuel", "surging idle fuel smell",
]  # fmt: skip
GOLD = ["rings"] * 4 + ["rod"] * 4 + ["carb"] * 4
LABELS = ["rod", "carb", "rings"]  # not sklearn's sorted order


def test_fit_save_load_keeps_the_adapters_label_order(tmp_path):
    model = LexicalModel.fit("word 1-2", 10.0, TEXTS, GOLD, LABELS)
    model.temperature = 1.5
    lp = model.logprobs(TEXTS)
    assert lp.shape == (12, 3)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(12), atol=1e-5)
    assert [LABELS[i] for i in lp.argmax(-1)] == GOLD  # columns follow LABELS, not sklearn's classes_
    model.save(tmp_path / LEXICAL_FILE)
    back = LexicalModel.load(tmp_path / LEXICAL_FILE, LABELS)
    assert back.temperature == 1.5
    assert torch.equal(
        back.logprobs(["a knock and some oil smoke"]), model.logprobs(["a knock and some oil smoke"])
    )
    with pytest.raises(AdapterError, match="does not match the adapter"):
        LexicalModel.load(tmp_path / LEXICAL_FILE, ["rod", "rings", "carb"])
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="not a readable lexical model"):
        LexicalModel.load(tmp_path / "bad.safetensors", LABELS)


def test_two_labels_give_both_columns_as_sklearn_does():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts, gold = TEXTS[:8], GOLD[:8]
    model = LexicalModel.fit("char_wb 2-5", 1.0, texts, gold, ["rod", "rings"])
    vec = TfidfVectorizer(sublinear_tf=True, **KINDS["char_wb 2-5"])
    ref = LogisticRegression(C=1.0, max_iter=3000).fit(vec.fit_transform(texts), gold)
    want = ref.predict_proba(vec.transform(["oil knock"]))[0]  # classes_ sorted: rings, rod
    got = model.logprobs(["oil knock"]).exp()[0]
    assert got.tolist() == pytest.approx([want[1], want[0]], abs=1e-5)


def test_fit_lexical_chooses_on_validation_and_needs_every_label():
    fit = list(zip(TEXTS[::2] + TEXTS[1::4], GOLD[::2] + GOLD[1::4], strict=True))
    val = list(zip(TEXTS[3::4], GOLD[3::4], strict=True))
    chosen = fit_lexical(fit, val, LABELS)
    assert chosen is not None and chosen.kind in KINDS and chosen.c in C_GRID
    # Its temperature is fitted on the validation split, as the adapter's is (calibration.py).
    gold = [LABELS.index(g) for _, g in val]
    texts = [t for t, _ in val]
    assert chosen.temperature == fit_temperature(chosen._logits(texts).float(), gold) != 1.0
    want = torch.log_softmax(chosen._logits(texts) / chosen.temperature, -1).float()
    assert torch.allclose(chosen.logprobs(texts), want)

    def val_score(kind, c):
        lp = LexicalModel.fit(kind, c, *zip(*fit, strict=True), LABELS).logprobs([t for t, _ in val]).double()
        gold = torch.tensor([LABELS.index(g) for _, g in val])
        return (
            (lp.argmax(-1) == gold).double().mean().item(),
            lp[torch.arange(len(val)), gold].mean().item(),
        )

    best = max(val_score(k, c) for k in KINDS for c in C_GRID)
    assert val_score(chosen.kind, chosen.c) == pytest.approx(best)
    assert fit_lexical([p for p in fit if p[1] != "carb"], val, LABELS) is None  # could never vote "carb"


def test_readout_is_the_temperature_softmax_without_lexical_and_the_mixture_with_it():
    loglik = torch.tensor([[-3.0, -1.0, -2.5], [-0.5, -4.0, -1.0]])
    texts = ["knock at high rpm", "blue smoke and oil"]
    assert torch.allclose(
        Readout(1.7).probabilities(loglik, texts), torch.softmax(loglik.float() / 1.7, dim=-1)
    )
    model = LexicalModel.fit("word 1-2", 10.0, TEXTS, GOLD, LABELS)
    mixed = Readout(1.7, model, 0.5, 0.8).probabilities(loglik, texts)
    by_hand = torch.softmax(
        (0.5 * torch.log_softmax(loglik / 1.7, -1) + 0.5 * model.logprobs(texts)) / 0.8, -1
    )
    assert torch.allclose(mixed, by_hand, atol=1e-6)
    assert torch.allclose(mixed.sum(-1), torch.ones(2))
    assert not torch.allclose(mixed, torch.softmax(loglik.float() / 1.7, dim=-1), atol=1e-3)
    assert torch.allclose(
        Readout(1.7, model, 0.0, 0.8).probabilities(loglik, texts),
        torch.softmax(loglik.float() / 1.7, dim=-1),
    )


def test_recipe_refuses_a_weight_outside_zero_to_one():
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="lexical_weight"):
            Recipe(lexical_weight=bad)


def test_refit_keeps_the_choices_and_learns_from_the_new_pairs():
    chosen = LexicalModel.fit("word 1-2", 10.0, TEXTS[::2], GOLD[::2], LABELS)
    chosen.temperature = 0.7
    refit = chosen.refit(list(zip(TEXTS, GOLD, strict=True)))
    assert (refit.kind, refit.c, refit.temperature, refit.labels) == ("word 1-2", 10.0, 0.7, LABELS)
    assert "burns" in refit.terms and "burns" not in chosen.terms  # it learned from the added texts
    want = LexicalModel.fit("word 1-2", 10.0, TEXTS, GOLD, LABELS)
    assert np.allclose(refit.coef, want.coef) and refit.terms == want.terms


# ----- on the real trained adapter -------------------------------------------------------------------------
NOTES = ["Knocks at 3100 RPM under load.", "Blue smoke on startup, burns oil.", "Idle surges, fuel weeping."]


def test_a_trained_adapter_carries_its_lexical_model_and_predict_applies_it(trained_adapter):
    info = AdapterInfo.read(trained_adapter)
    assert info.lexical is not None and (trained_adapter / LEXICAL_FILE).is_file()
    assert info.lexical["weight"] == Recipe().lexical_weight and info.lexical["kind"] in KINDS
    validator = load_validator(trained_adapter, device="cpu")
    got = validator.predict(NOTES)
    alone = score_items(validator.model, validator.fmt, NOTES, readout=Readout(info.temperature))
    p_adapter = torch.tensor([[s.probs[k] for k in validator.fmt.labels] for s in alone])
    lexical = LexicalModel.load(trained_adapter / LEXICAL_FILE, info.labels).logprobs(NOTES)
    w, t = info.lexical["weight"], info.lexical["mixture_temperature"]
    want = torch.softmax(((1 - w) * p_adapter.log() + w * lexical) / t, -1)
    have = torch.tensor([[s.probs[k] for k in validator.fmt.labels] for s in got])
    assert torch.allclose(have, want, atol=1e-4)
    assert not torch.allclose(have, p_adapter, atol=1e-3)  # the lexical model did change them


def test_the_kept_lexical_model_has_seen_training_and_validation_items(trained_adapter, small_data):
    """Kind, C and temperatures are chosen on the validation split; the model kept is then refitted on
    every item of the data file (training + validation), as a TF-IDF baseline uses all its data."""
    info = AdapterInfo.read(trained_adapter)
    kept = LexicalModel.load(trained_adapter / LEXICAL_FILE, info.labels)
    rows = [json.loads(line) for line in small_data.read_text().splitlines()]
    assert info.training["n_val"] > 0 and len(rows) == info.training["n_train"] + info.training["n_val"]
    everything = LexicalModel.fit(
        kept.kind, kept.c, [lexical_text(r["item"], r.get("requirement")) for r in rows],
        [r["label"] for r in rows], info.labels,
    )  # fmt: skip
    assert kept.terms == everything.terms
    assert np.allclose(kept.coef, everything.coef, atol=1e-4)


def test_program_checks_apply_the_same_readout_as_predict(trained_adapter):
    backend = LocalHFBackend(device="cpu")
    adapter = CustomIntrinsicAdapter(str(trained_adapter))
    backend.add_adapter(adapter)
    validator = load_validator(trained_adapter, device="cpu")
    for note, scores in zip(NOTES, validator.predict(NOTES), strict=True):
        (checked,) = backend.check(note, [(adapter.name, None)])
        assert checked.scores.label == scores.label
        for label, p in scores.probs.items():
            assert checked.scores.probs[label] == pytest.approx(p, abs=1e-4)


def test_an_adapter_without_lexical_model_scores_alone_and_a_missing_file_is_refused(
    trained_adapter, tmp_path
):
    plain = tmp_path / "plain"
    shutil.copytree(trained_adapter, plain)
    data = json.loads((plain / "validora.json").read_text())
    data.pop("lexical")  # as written before lexical models existed
    (plain / "validora.json").write_text(json.dumps(data))
    (plain / LEXICAL_FILE).unlink()
    validator = load_validator(plain, device="cpu")
    alone = score_items(validator.model, validator.fmt, NOTES, readout=Readout(validator.info.temperature))
    assert [s.probs for s in validator.predict(NOTES)] == [s.probs for s in alone]

    missing = tmp_path / "missing"
    shutil.copytree(trained_adapter, missing)
    (missing / LEXICAL_FILE).unlink()
    with pytest.raises(AdapterError, match=LEXICAL_FILE):
        load_validator(missing, device="cpu")
    bad = tmp_path / "bad"
    shutil.copytree(trained_adapter, bad)
    data = json.loads((bad / "validora.json").read_text())
    data["lexical"]["weight"] = 1.5
    (bad / "validora.json").write_text(json.dumps(data))
    with pytest.raises(AdapterError, match="'lexical'"):
        AdapterInfo.read(bad)


def test_cli_lexical_weight_zero_trains_the_adapter_alone(small_data, tmp_path):
    out = tmp_path / "alone"
    args = ["alora", "train", str(small_data), "--outfile", str(out), "--epochs", "1", "--device", "cpu",
            "--lexical-weight", "0", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert not (out / LEXICAL_FILE).exists() and AdapterInfo.read(out).lexical is None
    assert json.loads(result.stdout)["lexical"] is None
    assert np.isfinite(AdapterInfo.read(out).temperature)


def test_lexical_text_puts_the_requirement_first():
    assert lexical_text("the note", "must be rod") == "must be rod\nthe note"
    assert lexical_text("the note") == "the note"
