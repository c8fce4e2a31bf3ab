"""The one record of a loaded adapter and the one registry both backends keep (backends/base.py), and the
llama.cpp backend importable without torch."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from validora.backends.base import AdapterRegistry, LoadedAdapter
from validora.errors import AdapterError
from validora.score.readout import Readout


def loaded(name: str, *, requirements: bool, alora: bool = True) -> LoadedAdapter:
    info = SimpleNamespace(base_model="base", is_alora=alora, requirements=["r"] if requirements else [])
    fmt = SimpleNamespace(labels=["yes", "no"])
    return LoadedAdapter(name, info, Path(name), fmt, Readout(), alora, requirements)  # type: ignore[arg-type]


@pytest.fixture
def built(monkeypatch):
    """LoadedAdapter.load without a tokenizer or files: the registry's rules alone."""

    def load(cls, name, info, path, tokenizer, handle=None):
        return loaded(name, requirements=bool(info.requirements))

    monkeypatch.setattr(LoadedAdapter, "load", classmethod(load))


def adapter(name: str, base: str = "base", *, requirements: bool = True) -> SimpleNamespace:
    info = SimpleNamespace(base_model=base, is_alora=True, requirements=["r"] if requirements else [])
    return SimpleNamespace(name=name, info=info, path=Path(name))


def test_a_classifier_ignores_requirement_texts_and_says_so():
    judge, classifier = loaded("judge", requirements=True), loaded("clf", requirements=False)
    assert judge.requirement_for("r") == "r" and not judge.ignores(["r"])
    assert classifier.requirement_for("r") is None and classifier.requirement_for(None) is None
    assert classifier.ignores([None, "r"]) and not classifier.ignores([None, None])
    assert classifier.ignoring_note("adapter 'clf'").startswith(
        "adapter 'clf' was trained without requirement texts"
    )


def test_the_registry_refuses_another_base_a_taken_name_and_unknown_names(built):
    registry = AdapterRegistry("base", threading.RLock())
    with pytest.raises(AdapterError, match="was trained on 'other' but this backend runs 'base'"):
        registry.add(adapter("a", "other"), tokenizer=None)
    first = registry.add(adapter("a"), tokenizer=None)
    assert registry.snapshot() == {"a": first} and registry.adapter_labels() == {"a": ["yes", "no"]}
    with pytest.raises(AdapterError, match="already added"):
        registry.add(adapter("a"), tokenizer=None)
    registry.add(adapter("clf", requirements=False), tokenizer=None)
    resolved = registry.resolve([("a", "r"), ("clf", "r"), (None, "r")])
    assert [key for key, _ in resolved] == [("a", "r"), ("clf", None), (None, "r")]
    assert resolved[2][1] is None and resolved[1][1].name == "clf"
    with pytest.raises(AdapterError, match=r"No adapter named 'gone'.*added: \['a', 'clf'\]"):
        registry.labels("gone")
    lasts = []
    registry.remove("a", lasts.append)
    registry.remove("clf", lasts.append)
    assert lasts == [False, True] and registry.snapshot() == {}
    with pytest.raises(AdapterError, match="No adapter named 'a'"):
        registry.remove("a")


def test_a_failed_attach_adds_nothing(built):
    registry = AdapterRegistry("base")

    def fails(_: LoadedAdapter) -> None:
        raise RuntimeError("attach failed")

    with pytest.raises(RuntimeError):
        registry.add(adapter("a"), tokenizer=None, attach=fails)
    assert registry.snapshot() == {}


def test_the_llamacpp_backend_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import validora.backends.llamacpp, validora.llamacpp.client, validora.llamacpp.server\n"
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
