"""No verdict from non-finite numbers (issue 20, item 2): every probability that reaches a result is
finite and sums to 1, or the adapter is refused by name; lexical.safetensors is checked field by field.

On the real embedded model and a trained adapter (copied before it is damaged).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from validora.adapter.schema import LEXICAL_FILE, AdapterInfo
from validora.backends.validator import load_validator
from validora.errors import AdapterError
from validora.score.lexical import LexicalModel
from validora.score.readout import Readout

from ..conftest import deadline

TEXTS = ["The engine knocks loudly under load.", "Blue smoke comes from the exhaust at start."]


@pytest.fixture
def copy(trained_adapter, tmp_path) -> Path:
    return Path(shutil.copytree(trained_adapter, tmp_path / "engine"))


def info_of(directory: Path) -> AdapterInfo:
    return AdapterInfo.read(directory)


def lexical_path(directory: Path) -> Path:
    path = directory / LEXICAL_FILE
    assert path.is_file(), "the trained adapter has a lexical model"
    return path


def rewrite_lexical(path: Path, meta: dict | None = None, **tensors) -> None:
    """lexical.safetensors again, with some metadata fields and tensors replaced."""
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    stored = json.loads(path.read_bytes()[8 : 8 + header_len])["__metadata__"]
    values = load_file(str(path))
    values.update(tensors)
    save_file(values, str(path), metadata={**stored, **(meta or {})})


# ----- the one place log-likelihoods become probabilities --------------------------------------------
def test_a_nan_in_the_loaded_weights_is_an_error_not_the_first_label(copy, fresh_model):
    """Weights poisoned in memory after a clean load (what a check at load cannot see): before, every
    item was the first label with NaN probabilities; now an AdapterError, nothing returned."""
    validator = load_validator(copy, loaded=fresh_model())
    good = validator.predict(TEXTS)
    assert all(math.isfinite(p) for s in good for p in s.probs.values())
    with torch.no_grad():
        weight = next(p for n, p in validator.model.named_parameters() if "lora_B" in n)
        weight.view(-1)[0] = float("nan")
    with pytest.raises(AdapterError, match="non-finite") as err:
        validator.predict(TEXTS)
    assert "corrupt" in str(err.value) and "item" in str(err.value)


def test_readout_refuses_nan_and_plus_inf_loglik_and_names_adapter_and_item(copy):
    info = info_of(copy)
    readout = Readout.of_adapter(info, copy, name="engine")
    k = len(info.labels)
    texts = [*TEXTS, "third"]
    fine = torch.full((3, k), -2.0)
    fine[:, 0] = -1.0
    scores = readout.scores(info.labels, fine, texts)
    assert all(abs(math.fsum(s.probs.values()) - 1) < 1e-6 for s in scores)
    for bad in (float("nan"), float("inf")):
        ll = fine.clone()
        ll[1, k - 1] = bad
        with pytest.raises(AdapterError) as err:
            readout.scores(info.labels, ll, texts, items=[7, 3, 9])
        text = str(err.value)
        assert "adapter 'engine'" in text and "item 3" in text and "non-finite" in text, text
    every = torch.full((1, k), -math.inf)  # every label below float precision: no probabilities
    with pytest.raises(AdapterError, match="non-finite label probabilities"):
        readout.scores(info.labels, every, TEXTS[:1])
    one = fine[:1].clone()  # one label below float precision is probability 0, not corruption
    one[0, k - 1] = -math.inf
    (got,) = readout.scores(info.labels, one, TEXTS[:1])
    assert got.probs[info.labels[-1]] == 0.0 and math.isclose(math.fsum(got.probs.values()), 1, abs_tol=1e-6)


@pytest.mark.parametrize("temperature", [1e-300, 1e-3, 1e3, 1e300, float("nan"), float("inf"), 0.0, -1.0])
def test_readout_refuses_temperatures_no_fit_gives(temperature):
    with pytest.raises(AdapterError, match="adapter 'engine' has temperature"):
        Readout(temperature, name="engine")
    with pytest.raises(AdapterError, match="mixture_temperature"):
        Readout(1.0, mixed_temperature=temperature, name="engine")


def test_of_adapter_reads_the_lexical_file_from_bytes_as_from_the_directory(copy):
    info = info_of(copy)
    ll = torch.tensor([[-1.0] + [-2.0] * (len(info.labels) - 1)])
    from_dir = Readout.of_adapter(info, copy).scores(info.labels, ll, TEXTS[:1])
    files = {LEXICAL_FILE: lexical_path(copy).read_bytes()}
    readout = Readout.of_adapter(info, files, name="engine")
    assert readout.name == "engine" and readout.lexical is not None
    assert readout.scores(info.labels, ll, TEXTS[:1]) == from_dir
    with pytest.raises(
        AdapterError, match=f"adapter 'engine' names a lexical model but has no {LEXICAL_FILE}"
    ):
        Readout.of_adapter(info, {}, name="engine")
    files[LEXICAL_FILE] = files[LEXICAL_FILE][:-10]
    with pytest.raises(AdapterError, match=f"{LEXICAL_FILE} of adapter 'engine' is not a readable"):
        Readout.of_adapter(info, files, name="engine")


# ----- lexical.safetensors, field by field -----------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "0", "-1", "inf", "1e-300", "1e300", "", "hot"])
def test_lexical_temperature_must_be_a_sane_number(copy, value):
    path, labels = lexical_path(copy), info_of(copy).labels
    rewrite_lexical(path, {"temperature": value})
    with pytest.raises(AdapterError, match='metadata "temperature"') as err:
        LexicalModel.load(path, labels)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("meta", "field"),
    [
        ({"c": "nan"}, '"c"'),
        ({"c": "-1"}, '"c"'),
        ({"kind": "word 9-9"}, '"kind"'),
        ({"labels": "[" * 100 + "]" * 100}, '"labels"'),
        ({"terms": '["\\ud800"]'}, '"terms"'),
        ({"terms": '["a", "a"]'}, '"terms"'),
        ({"terms": "{}"}, '"terms"'),
    ],
    ids=["c-nan", "c-negative", "kind", "labels-deep", "terms-surrogate", "terms-twice", "terms-object"],
)
def test_lexical_metadata_fields_are_checked(copy, meta, field):
    path, labels = lexical_path(copy), info_of(copy).labels
    rewrite_lexical(path, meta)
    with pytest.raises(AdapterError, match=field):
        LexicalModel.load(path, labels)


def test_an_inf_in_the_lexical_coefficients_is_refused(copy):
    path, labels = lexical_path(copy), info_of(copy).labels
    coef = load_file(str(path))["coef"].copy()
    coef[0, 0] = np.inf
    rewrite_lexical(path, coef=coef)
    with pytest.raises(AdapterError, match="tensor 'coef' holds non-finite values"):
        LexicalModel.load(path, labels)


def test_an_integer_lexical_tensor_is_refused(copy):
    path, labels = lexical_path(copy), info_of(copy).labels
    coef = load_file(str(path))["coef"]
    rewrite_lexical(path, coef=np.round(coef).astype(np.int64))
    with pytest.raises(AdapterError, match="tensor 'coef' is 'I64', not float32 or float64"):
        LexicalModel.load(path, labels)


def test_a_truncated_lexical_file_is_refused(copy):
    path, labels = lexical_path(copy), info_of(copy).labels
    data = path.read_bytes()
    for cut in (len(data) - 8, 100, 4):
        path.write_bytes(data[:cut])
        with pytest.raises(AdapterError, match="not a readable lexical model"):
            LexicalModel.load(path, labels)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_in_place_of_the_lexical_file_is_refused_without_hanging(copy):
    path, info = lexical_path(copy), info_of(copy)
    path.unlink()
    os.mkfifo(path)
    with deadline(20), pytest.raises(AdapterError, match="is not a regular file"):
        LexicalModel.load(path, info.labels)
    with deadline(20), pytest.raises(AdapterError, match="is not a regular file"):
        Readout.of_adapter(info, copy, name="engine")
