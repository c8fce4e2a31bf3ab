"""Validators inside programs on the real model: backend, adapters, requirements, sessions, sampling.

Routing, thresholds, retries and placeholders over a scripted backend: tests/programs/test_fake_backend.py.
"""

import json
import shutil
import threading

import pytest
import torch

from validora import Backend, ChatContext, CustomIntrinsicAdapter, LocalHFBackend, Session, req
from validora.adapter.schema import LEXICAL_FILE
from validora.errors import AdapterError, RequirementError
from validora.programs.sampling import RejectionSamplingStrategy
from validora.score.lexical import lexical_text
from validora.score.scoring import full_loglik, score_items

from ..conftest import LABELS

NOTE = "High vibration at 3100 RPM, connecting rod suspected."
SEED_REQ = "The failure mode must not be 'no_failure'."
SHORT = {"max_new_tokens": 24}


@pytest.fixture(scope="module")
def backend(trained_adapter):
    b = LocalHFBackend(device="cpu")
    b.add_adapter(
        CustomIntrinsicAdapter(model_id=str(trained_adapter), base_model_name="SmolLM2-135M-Instruct")
    )
    return b


def test_label_predicates():
    labels = LABELS
    assert req(SEED_REQ).passing_labels(labels) == set(labels) - {"no_failure"}
    assert req("The failure must be 'piston_rings'.").passing_labels(labels) == {"piston_rings"}
    assert req('Must be "connecting_rod" or "piston_rings"').passing_labels(labels) == {
        "connecting_rod",
        "piston_rings",
    }
    assert req("Anything other than mini_carburetor").passing_labels(labels) == set(labels) - {
        "mini_carburetor"
    }
    assert req("whatever", accept=["no_failure"]).passing_labels(labels) == {"no_failure"}
    assert req("whatever", reject=["no_failure"]).passing_labels(labels) == set(labels) - {"no_failure"}
    assert req("Is the summary polite?").passing_labels(["yes", "no"]) == {"yes"}
    assert req("must be 'compliant'").passing_labels(["non_compliant", "compliant"]) == {"compliant"}
    with pytest.raises(RequirementError):  # a label named outside any form the grammar reads
        req("Compliant with house style").passing_labels(["non_compliant", "compliant"])
    with pytest.raises(RequirementError, match="accept=") as err:
        req("The summary is good.").passing_labels(labels)
    assert "Quote the label" in str(err.value)
    with pytest.raises(RequirementError, match="unknown label"):
        req("x", accept=["gearbox"]).passing_labels(labels)


def test_seed_requirement_routes_to_the_adapter_and_follows_the_threshold(backend):
    assert isinstance(backend, Backend)
    m = Session(backend, ctx=ChatContext())
    result = m.instruct(
        "Write a triage summary based on this technician note: {{note}}",
        user_variables={"note": NOTE},
        requirements=[req(SEED_REQ)],
        model_options=SHORT,
    )
    assert str(result) == result.text and result.text
    (v,) = result.validations
    assert v.adapter == "engine" and set(v.probs) == set(LABELS)
    assert v.score == pytest.approx(1 - v.probs["no_failure"], abs=1e-6)
    assert v.passed == (v.score >= 0.5) and "no_failure" in v.reason
    assert [msg["role"] for msg in m.ctx.messages] == ["user", "assistant"]
    assert m.ctx.messages[1]["content"] == result.text
    # The adapter judged the generated output, exactly as a direct check of that text does.
    (direct,) = backend.check(result.text, [("engine", SEED_REQ)])
    assert direct.scores.probs == pytest.approx(v.probs, abs=1e-6)


def test_flag_off_uses_the_base_model_judge_unless_adapter_is_named(backend):
    m = Session(backend)
    try:
        backend.default_to_constraint_checking_alora = False
        (judged,) = m.validate([req("The text mentions a vibration.")], output=NOTE)
        assert judged.adapter == "base-model judge" and set(judged.probs) == {"yes", "no"}
        (named,) = m.validate([req(SEED_REQ, adapter="engine")], output=NOTE)
        assert named.adapter == "engine"
    finally:
        backend.default_to_constraint_checking_alora = True
    (routed,) = m.validate([SEED_REQ], output=NOTE)
    assert routed.adapter == "engine"
    (python,) = m.validate([req("short", validation_fn=lambda text: len(text) < 100)], output=NOTE)
    assert python.passed and python.adapter == "python"


@pytest.fixture(scope="module")
def requirement_adapter(trained_adapter, tmp_path_factory):
    """The trained adapter marked as trained with requirement texts: requirements enter its prompt."""
    path = shutil.copytree(trained_adapter, tmp_path_factory.mktemp("req") / "second")
    info = json.loads((path / "validora.json").read_text())
    (path / "validora.json").write_text(json.dumps({**info, "requirements": True}))
    return path


def test_a_classifier_adapter_judges_the_text_alone(backend):
    """Trained without requirement texts: its prompt holds the output alone, as in training."""
    output = "High vibration at 3100 RPM, connecting rod suspected."
    first, second, plain = backend.check(
        output, [("engine", SEED_REQ), ("engine", "Anything."), ("engine", None)]
    )
    backend._model.set_adapter("engine")
    readout = backend.adapters["engine"].readout  # its temperature and lexical model
    (alone,) = score_items(backend._model, backend.adapters["engine"].fmt, [output], readout=readout)
    for got in (first, second, plain):
        assert got.scores.probs == pytest.approx(alone.probs, abs=1e-4)


def test_shared_prefix_checks_equal_separate_checks(backend, requirement_adapter):
    second = CustomIntrinsicAdapter(model_id=str(requirement_adapter))
    backend.add_adapter(second)
    try:
        output = "Summary: heavy knock under load at 3100 RPM; suspect the connecting rod bearing."
        checks = [
            ("engine", SEED_REQ),
            ("second", "Must be 'connecting_rod'."),
            ("second", None),
            (None, "Mentions RPM."),
        ]
        shared = backend.check(output, checks)
        for (adapter, requirement), got in zip(checks[:3], shared[:3], strict=True):
            backend._model.set_adapter(adapter)
            prompt_requirement = requirement if adapter == "second" else None
            (alone,) = score_items(
                backend._model,
                backend.adapters[adapter].fmt,
                [output],
                prompt_requirement,
                readout=backend.adapters[adapter].readout,
            )
            assert got.scores.probs == pytest.approx(alone.probs, abs=1e-4)
        with backend._model.disable_adapter():
            naive = torch.softmax(
                full_loglik(
                    backend._model, backend._judge, [backend._judge.encode(output, "Mentions RPM.").prefix]
                )[0],
                -1,
            )
        assert [shared[3].scores.probs[k] for k in ("yes", "no")] == pytest.approx(naive.tolist(), abs=1e-4)
    finally:
        backend.remove_adapter("second")
    assert list(backend.adapters) == ["engine"]


def test_checks_of_one_adapter_share_one_forward_and_match_separate_checks(backend, requirement_adapter):
    """One adapter: the output leads a single packed row; a long output is cut once for all checks."""
    backend.add_adapter(CustomIntrinsicAdapter(model_id=str(requirement_adapter)))
    requirements = [SEED_REQ, "Must be 'connecting_rod'.", None, "Must be 'piston_rings'."]
    for output in ("Rod knock at 3100 RPM.", "Oil burning, blue smoke, low compression. " * 200):
        shared = backend.check(output, [("second", r) for r in requirements])
        backend._model.set_adapter("second")
        fmt = backend.adapters["second"].fmt
        room = min(fmt.room(r) for r in requirements)
        for requirement, got in zip(requirements, shared, strict=True):
            prefix = [fmt.encode(output, requirement, room=room).prefix]
            text = lexical_text(output, requirement)  # the lexical model reads the whole output
            alone = backend.adapters["second"].readout.probabilities(
                full_loglik(backend._model, fmt, prefix), [text]
            )[0]
            assert [got.scores.probs[label] for label in fmt.labels] == pytest.approx(
                alone.tolist(), abs=1e-4
            )
    backend.remove_adapter("second")


def test_lora_adapters_take_the_full_path(backend, trained_adapter, tmp_path):
    from peft import LoraConfig, get_peft_model

    from validora.core.models import load_base_model

    fresh = load_base_model(None, device="cpu")
    torch.manual_seed(0)
    peft = get_peft_model(
        fresh.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    lora_dir = tmp_path / "lora"
    peft.save_pretrained(str(lora_dir))
    info = json.loads((trained_adapter / "validora.json").read_text())
    info["adapter_type"] = "lora"
    info["file_sha256"] = None  # another adapter's files: hand-made, like one saved before the hashes
    (lora_dir / "validora.json").write_text(json.dumps(info))
    shutil.copy(trained_adapter / LEXICAL_FILE, lora_dir)
    backend.add_adapter(CustomIntrinsicAdapter(model_id=str(lora_dir)))
    try:
        output = "Blue smoke and heavy oil use."
        (got,) = backend.check(output, [("lora", SEED_REQ)])
        # A classifier adapter (trained without requirement texts) sees the output alone.
        expected = score_items(
            peft, backend.adapters["lora"].fmt, [output], None, readout=backend.adapters["lora"].readout
        )[0]
        assert got.scores.probs == pytest.approx(expected.probs, abs=1e-4)
    finally:
        backend.remove_adapter("lora")


def test_rejection_sampling_resamples_until_a_requirement_passes(backend):
    calls = []

    def second_time_lucky(text: str) -> bool:
        calls.append(text)
        return len(calls) >= 2

    m = Session(backend)
    result = m.instruct(
        "Name one engine part.",
        requirements=[req("passes on the second try", validation_fn=second_time_lucky)],
        strategy=RejectionSamplingStrategy(loop_budget=3),
        model_options={**SHORT, "seed": 1},
        return_sampling_results=True,
    )
    assert result.success and len(result.sample_generations) == 2
    assert [v[0].passed for v in result.sample_validations] == [False, True]
    assert result.result is result.sample_generations[1]
    assert result.validations == result.sample_validations[1] and result.validations[0].passed
    failing = m.instruct("Name one engine part.", requirements=[req("never", validation_fn=lambda t: False)],
                         strategy=RejectionSamplingStrategy(loop_budget=2), model_options=SHORT,
                         return_sampling_results=True)  # fmt: skip
    assert not failing.success and len(failing.sample_generations) == 2
    assert failing.validations is failing.result.validations and not failing.validations[0].passed


def test_base_output_unchanged_by_adapters_and_validation(trained_adapter):
    b = LocalHFBackend(device="cpu")
    messages = [{"role": "user", "content": "Describe a lawn mower in one sentence."}]
    before = b.generate(messages, SHORT).text
    b.add_adapter(CustomIntrinsicAdapter(model_id=str(trained_adapter)))
    Session(b).validate([SEED_REQ], output=before)
    assert b.generate(messages, SHORT).text == before


def test_concurrent_instruct_calls_are_safe(backend):
    """Three sessions at once on one backend give what one session alone gives.

    The reference also runs in a worker thread: torch's intra-op thread pool differs between the main
    thread and others, which can flip a near-tie in greedy decoding.
    """
    once = RejectionSamplingStrategy(loop_budget=1)  # greedy only, so every run must produce the same text
    results, errors = [], []

    def worker():
        try:
            results.append(
                Session(backend).instruct(
                    "Name a tool.", requirements=[SEED_REQ], strategy=once, model_options=SHORT
                )
            )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    alone = threading.Thread(target=worker)
    alone.start()
    alone.join()
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    expected = results[0]
    assert [r.text for r in results[1:]] == [expected.text] * 3
    assert all(
        r.validations[0].probs == pytest.approx(expected.validations[0].probs, abs=1e-5) for r in results
    )


def test_base_model_mismatch_is_a_clear_error(trained_adapter, tmp_path, backend):
    with pytest.raises(AdapterError, match=r"smollm2-135m-instruct.*granite-3\.2-8b-instruct"):
        CustomIntrinsicAdapter(model_id=str(trained_adapter), base_model_name="granite-3.2-8b-instruct")
    other = tmp_path / "granite_adapter"
    shutil.copytree(trained_adapter, other)
    info = json.loads((other / "validora.json").read_text())
    info["base_model"] = "ibm-granite/granite-3.2-8b-instruct"
    (other / "validora.json").write_text(json.dumps(info))
    with pytest.raises(AdapterError, match=r"granite-3\.2-8b-instruct.*smollm2-135m-instruct"):
        backend.add_adapter(CustomIntrinsicAdapter(model_id=str(other)))
    with pytest.raises(AdapterError, match="not found"):
        CustomIntrinsicAdapter(model_id=str(tmp_path / "missing"))


def test_a_judge_check_does_not_shorten_the_adapter_checks_of_a_long_output(backend):
    """Judge and adapter prompts never share a cache, so each kind cuts a long output by its own room."""
    long = " ".join([NOTE] * 120)  # well over the 1024-token budget of both kinds
    (alone,) = backend.check(long, [("engine", SEED_REQ)])
    together, _ = backend.check(long, [("engine", SEED_REQ), (None, "Mentions RPM.")])
    for label in LABELS:
        assert together.scores.probs[label] == pytest.approx(alone.scores.probs[label], abs=1e-5)
