"""The backend's adapter registry: removing adapters returns to the plain base model; tables change under the lock."""

import shutil
import threading
import time

import pytest
from peft import PeftModel

from validora import CustomIntrinsicAdapter, LocalHFBackend, Session, req
from validora.errors import AdapterError, ValidoraError

NOTE = "High vibration at 3100 RPM, connecting rod suspected."
SEED_REQ = "The failure mode must not be 'no_failure'."
MESSAGES = [{"role": "user", "content": "Describe a lawn mower in one sentence."}]
SHORT = {"max_new_tokens": 8}


@pytest.fixture(scope="module")
def bare():
    """One backend for these tests; each leaves it without adapters."""
    return LocalHFBackend(device="cpu")


def lora_modules(model) -> list[str]:
    return [name for name, _ in model.named_modules() if "lora" in name.lower()]


def test_removing_the_last_adapter_restores_the_plain_base_model(bare, trained_adapter, tmp_path):
    b = bare
    assert not isinstance(b._model, PeftModel)  # never adapted yet
    never_adapted = b.generate(MESSAGES, SHORT).text
    (judged,) = b.check(NOTE, [(None, "Mentions RPM.")])
    engine = CustomIntrinsicAdapter(model_id=str(trained_adapter))
    b.add_adapter(engine)
    (scored,) = b.check(NOTE, [("engine", SEED_REQ)])
    b.remove_adapter("engine")
    assert not isinstance(b._model, PeftModel) and not lora_modules(b._model)
    assert b.generate(MESSAGES, SHORT).text == never_adapted
    (again,) = b.check(NOTE, [(None, "Mentions RPM.")])
    assert again.scores.probs == pytest.approx(judged.scores.probs, abs=1e-5)
    (validated,) = Session(b).validate(["Mentions RPM."], output=NOTE)
    assert validated.adapter == "base-model judge"
    assert validated.probs == pytest.approx(judged.scores.probs, abs=1e-5)
    # Added back, the adapter scores as before; two adapters removed in turn leave the base model too.
    b.add_adapter(engine)
    (back,) = b.check(NOTE, [("engine", SEED_REQ)])
    assert back.scores.probs == pytest.approx(scored.scores.probs, abs=1e-5)
    twin_dir = shutil.copytree(trained_adapter, tmp_path / "twin")
    b.add_adapter(CustomIntrinsicAdapter(model_id=str(twin_dir)))
    b.remove_adapter("engine")
    (twin,) = b.check(NOTE, [("twin", SEED_REQ)])
    assert twin.scores.probs == pytest.approx(scored.scores.probs, abs=1e-5)
    b.remove_adapter("twin")
    assert not lora_modules(b._model) and b.adapters == {} and b.adapter_labels() == {}
    assert b.generate(MESSAGES, SHORT).text == never_adapted


def test_a_check_naming_an_adapter_removed_meanwhile_is_a_clear_error(bare, trained_adapter):
    """A check that started before a removal reads the adapter tables only under the lock."""
    b = bare
    b.add_adapter(CustomIntrinsicAdapter(model_id=str(trained_adapter)))
    assert b.adapter_labels() == {"engine": b.labels("engine")}
    errors: dict[str, BaseException] = {}

    def run(name, call):
        try:
            call()
        except BaseException as exc:
            errors[name] = exc

    calls = {
        "check": lambda: b.check(NOTE, [("engine", SEED_REQ), (None, "Mentions RPM.")]),
        "validate": lambda: Session(b).validate([req(SEED_REQ, adapter="engine")], output=NOTE),
    }
    with b._lock:  # the calls start while the adapter exists, then wait for the lock
        threads = [threading.Thread(target=run, args=item) for item in calls.items()]
        for t in threads:
            t.start()
        time.sleep(1.0)
        b.remove_adapter("engine")
    for t in threads:
        t.join(timeout=120)
    assert set(errors) == {"check", "validate"}
    assert isinstance(errors["check"], AdapterError)
    assert "No adapter named 'engine' (it was removed" in str(errors["check"])
    assert isinstance(errors["validate"], ValidoraError) and "engine" in str(errors["validate"])
    with pytest.raises(AdapterError, match="it was removed"):
        b.labels("engine")
    with pytest.raises(AdapterError, match="it was removed"):
        b.remove_adapter("engine")
