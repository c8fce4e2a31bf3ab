"""Programs over a scripted backend: routing, thresholds, retries, strategies, placeholders, errors.

No model is loaded: each test runs in milliseconds. The real model's side of the same paths is in
tests/programs/test_programs.py.
"""

import inspect
import subprocess
import sys

import pytest

from validora import Backend, ChatContext, MultiTurnStrategy, RejectionSamplingStrategy, Session, req
from validora.core.prompting import Format, JudgeFormat, PromptFormat
from validora.errors import AdapterError, ConfigError, RequirementError
from validora.programs.requirements import (
    AdapterRoute,
    JudgeRoute,
    PythonRoute,
    ValidationResult,
    route,
    validate_output,
)
from validora.programs.sampling import ModelOutput, SamplingResult

from ..conftest import LABELS
from ..fake_backend import FakeBackend

NOTE = "High vibration at 3100 RPM, connecting rod suspected."
SEED_REQ = "The failure mode must not be 'no_failure'."
QUARTER = dict.fromkeys(LABELS, 0.25)
MOSTLY_FINE = {"piston_rings": 0.1, "connecting_rod": 0.1, "mini_carburetor": 0.1, "no_failure": 0.7}
YES = {"yes": 0.75, "no": 0.25}


def engine(**kwargs) -> FakeBackend:
    return FakeBackend(labels={"engine": list(LABELS)}, **kwargs)


def two_adapters(**kwargs) -> FakeBackend:
    return FakeBackend(labels={"engine": list(LABELS), "tone": ["polite", "rude"]}, **kwargs)


# ----- the interface ---------------------------------------------------------------------------------
class CharTokenizer:
    """One token per character, no chat template: enough to build both prompt formats."""

    chat_template = None
    eos_token_id = 0
    pad_token_id = None

    def __call__(self, text: str, **_: object) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def parameters(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_the_local_and_the_fake_backend_implement_the_protocol_as_written():
    from validora.backends.huggingface import LocalHFBackend

    assert isinstance(engine(), Backend) and not isinstance(object(), Backend)
    for member in ("generate", "check", "adapter_labels"):
        written = parameters(getattr(Backend, member))
        assert parameters(getattr(LocalHFBackend, member)) == written
        assert parameters(getattr(FakeBackend, member)) == written


def test_both_prompt_formats_are_formats():
    for fmt in (PromptFormat(CharTokenizer(), ["ok", "bad"]), JudgeFormat(CharTokenizer())):
        assert isinstance(fmt, Format)
        for member in ("room", "encode"):
            assert parameters(getattr(fmt, member)) == parameters(getattr(Format, member))[1:]
    assert not isinstance(object(), Format)


def test_a_session_refuses_what_is_not_a_backend():
    with pytest.raises(ConfigError, match=r"needs a backend.*not str"):
        Session("smollm2-135m-instruct")


# ----- routing ---------------------------------------------------------------------------------------
def test_the_only_adapter_judges_and_its_passing_labels_follow_the_requirement():
    b = engine(probs={("engine", NOTE): MOSTLY_FINE})
    (v,) = Session(b).validate([SEED_REQ], output=NOTE)
    assert b.checked == [(NOTE, [("engine", SEED_REQ)])]
    assert v.adapter == "engine" and v.probs == MOSTLY_FINE and v.label == "no_failure"
    assert v.score == pytest.approx(0.3) and not v.passed
    assert "adapter 'engine' gives P(connecting_rod or mini_carburetor or piston_rings) = 0.300" in v.reason
    assert "failing labels: no_failure" in v.reason and "most probable: no_failure" in v.reason


def test_routes_are_explicit_kinds():
    labels = {"engine": list(LABELS)}
    assert route(req("short", validation_fn=len), labels, True) == PythonRoute()
    assert route(req(SEED_REQ), labels, True) == AdapterRoute("engine", frozenset(LABELS) - {"no_failure"})
    assert route(req(SEED_REQ), labels, False) == JudgeRoute(frozenset({"yes"}))
    assert route(req(SEED_REQ, adapter="engine"), labels, False).adapter == "engine"
    assert route(req("Is it polite?"), {}, True) == JudgeRoute()


def test_several_adapters_route_by_quoted_label_or_adapter_name():
    b = two_adapters(probs={("engine", None): QUARTER, ("tone", None): {"polite": 0.9, "rude": 0.1}})
    by_label, by_name = Session(b).validate(
        [req("Must be 'polite'."), req("Must not be 'no_failure'.", adapter="engine")], output=NOTE
    )
    assert b.checks == [("tone", "Must be 'polite'."), ("engine", "Must not be 'no_failure'.")]
    assert (by_label.adapter, by_label.passed) == ("tone", True)
    assert (by_name.adapter, by_name.score) == ("engine", 0.75)
    with pytest.raises(RequirementError, match="Several adapters could judge"):
        Session(b).validate(["Be brief."], output=NOTE)
    with pytest.raises(RequirementError, match="adapter='gearbox' is not added"):
        Session(b).validate([req("Must be 'polite'.", adapter="gearbox")], output=NOTE)
    assert len(b.checked) == 1  # a requirement that cannot be routed asks the backend nothing


def test_flag_off_uses_the_judge_unless_an_adapter_is_named():
    b = engine(probs={(None, NOTE): YES, ("engine", NOTE): QUARTER})
    b.default_to_constraint_checking_alora = False
    judged, named = Session(b).validate(
        [req("The text mentions a vibration."), req(SEED_REQ, adapter="engine")], output=NOTE
    )
    assert b.checks == [(None, "The text mentions a vibration."), ("engine", SEED_REQ)]
    assert judged.adapter == "base-model judge" and judged.probs == YES and judged.score == 0.75
    assert judged.reason.startswith("the base model (yes/no judge) gives P(yes) = 0.750 ≥ 0.5")
    assert named.adapter == "engine"


def test_without_adapters_the_judge_decides_even_with_the_flag_on():
    b = FakeBackend(probs={(None, None): {"yes": 0.2, "no": 0.8}})
    (v,) = Session(b).validate(["Mentions RPM."], output=NOTE)
    assert b.checks == [(None, "Mentions RPM.")]
    assert v.adapter == "base-model judge" and not v.passed and v.label == "no"


def test_python_checks_ask_no_model_and_results_keep_the_requirements_order():
    b = engine(probs={("engine", NOTE): QUARTER})
    only_python = Session(b).validate([req("short", validation_fn=lambda t: len(t) < 100)], output=NOTE)
    assert b.checked == [] and only_python[0].adapter == "python" and only_python[0].passed
    first, model, last = Session(b).validate(
        [
            req("has RPM", validation_fn=lambda t: (False, "no digits")),
            SEED_REQ,
            req("custom", validation_fn=lambda t: ValidationResult(True, 0.9, "mine", "custom")),
        ],
        output=NOTE,
    )
    assert b.checked == [(NOTE, [("engine", SEED_REQ)])]  # one backend call holds every model check
    assert (first.adapter, first.passed, first.score, first.reason) == ("python", False, 0.0, "no digits")
    assert model.adapter == "engine" and model.score == 0.75
    assert (last.score, last.reason) == (0.9, "mine")


# ----- thresholds ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("threshold", "passed"), [(0.75, True), (0.7500001, False), (0.0, True)])
def test_an_adapter_check_passes_at_its_threshold_and_fails_just_above(threshold, passed):
    b = engine(probs={("engine", NOTE): QUARTER})
    (v,) = validate_output(b, NOTE, [req(SEED_REQ, threshold=threshold)])
    assert v.score == 0.75 and v.passed is passed
    assert f"{'≥' if passed else '<'} {threshold}" in v.reason


def test_the_judge_follows_the_threshold_too():
    b = FakeBackend(probs={(None, NOTE): {"yes": 0.5, "no": 0.5}})
    at, above = validate_output(b, NOTE, [req("Mentions RPM."), req("Mentions RPM.", threshold=0.51)])
    assert at.passed and not above.passed
    with pytest.raises(RequirementError, match="between 0 and 1"):
        req("Mentions RPM.", threshold=1.5)


# ----- retries and strategies ------------------------------------------------------------------------
def test_rejection_sampling_resamples_until_a_requirement_passes():
    calls = []

    def second_time_lucky(text: str) -> bool:
        calls.append(text)
        return len(calls) >= 2

    b = engine(texts=["first", "second", "third"])
    m = Session(b)
    result = m.instruct(
        "Name one engine part.",
        requirements=[req("passes on the second try", validation_fn=second_time_lucky)],
        strategy=RejectionSamplingStrategy(loop_budget=3),
        model_options={"max_new_tokens": 24, "seed": 1},
        return_sampling_results=True,
    )
    assert isinstance(result, SamplingResult)
    assert result.success and len(result.sample_generations) == 2 and calls == ["first", "second"]
    assert [v[0].passed for v in result.sample_validations] == [False, True]
    assert result.result is result.sample_generations[1] and result.result.text == "second"
    # The retry samples (temperature on) with the next seed; the first try is as asked.
    assert [opts for _, opts in b.generated] == [
        {"max_new_tokens": 24, "seed": 1},
        {"max_new_tokens": 24, "seed": 2, "temperature": 0.7},
    ]
    assert m.ctx.messages[-1] == {"role": "assistant", "content": "second"}


def test_the_loop_budget_bounds_the_tries_and_the_best_failure_is_chosen():
    b = engine(texts=["a", "bb", "ccc"])
    m = Session(b)
    failing = m.instruct(
        "Name one engine part.",
        requirements=[req("never", validation_fn=lambda t: False)],
        strategy=RejectionSamplingStrategy(loop_budget=2),
        return_sampling_results=True,
    )
    assert not failing.success and len(failing.sample_generations) == 2 and len(b.generated) == 2
    assert failing.result.text == "a"  # a tie: the first
    b = engine(texts=["a", "bb", "ccc"])
    best = Session(b).instruct(
        "x",
        requirements=[
            req("two letters or more", validation_fn=lambda t: len(t) >= 2),
            req("three letters", validation_fn=lambda t: len(t) == 3),
            req("never", validation_fn=lambda t: False),
        ],
        strategy=RejectionSamplingStrategy(loop_budget=3, retry_temperature=0.3),
        model_options={"temperature": 0.9},
        return_sampling_results=True,
    )
    assert best.result.text == "ccc" and [len(v) for v in best.sample_validations] == [3, 3, 3]
    assert [opts["temperature"] for _, opts in b.generated] == [0.9, 0.9, 0.9]  # a given temperature stays
    with pytest.raises(ConfigError, match="loop_budget"):
        RejectionSamplingStrategy(loop_budget=0)


def test_multi_turn_retries_show_the_failed_answer_and_only_the_failed_requirements():
    b = engine(texts=["Rod.", "The connecting rod."], probs={("engine", None): QUARTER})
    m = Session(b, ctx=ChatContext(system="Be brief."))
    result = m.instruct(
        "Name the part in {{note}}",
        user_variables={"note": NOTE},
        requirements=[SEED_REQ, req("two words or more", validation_fn=lambda t: len(t.split()) > 1)],
        strategy=MultiTurnStrategy(loop_budget=2),
    )
    assert isinstance(result, ModelOutput) and result.passed and str(result) == "The connecting rod."
    first, retry = (messages for messages, _ in b.generated)
    prompt = f"Name the part in {NOTE}"
    assert first == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
    assert retry[:2] == first and retry[2] == {"role": "assistant", "content": "Rod."}
    assert retry[3]["role"] == "user" and len(retry) == 4
    assert "- two words or more (validation_fn returned False)" in retry[3]["content"]
    assert SEED_REQ not in retry[3]["content"]  # it passed
    # The context keeps the user's turn and the chosen answer only, never the failed try.
    assert m.ctx.messages == [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": "The connecting rod."},
    ]


def test_without_requirements_one_generation_is_the_answer_and_chat_fills_nothing():
    b = engine(texts=["Hello {{x}}."])
    m = Session(b)
    out = m.chat("Say {{x}}.")
    assert isinstance(out, ModelOutput) and out.validations == [] and out.passed
    assert b.generated[0][0] == [{"role": "user", "content": "Say {{x}}."}] and b.checked == []
    sampled = m.chat("Again.", return_sampling_results=True)
    assert isinstance(sampled, SamplingResult) and sampled.success and len(sampled.sample_generations) == 1
    assert len(m.ctx) == 4 and m.validate([req("ends with a dot", validation_fn=lambda t: t.endswith("."))])


# ----- placeholders and errors -----------------------------------------------------------------------
def test_placeholders_are_checked():
    b = engine()
    m = Session(b)
    with pytest.raises(ConfigError, match="lacks"):
        m.instruct("Summarise {{note}}", user_variables={})
    with pytest.raises(ConfigError, match="not used"):
        m.instruct("Summarise this", user_variables={"note": NOTE})
    assert len(m.ctx) == 0 and b.generated == []
    m.instruct("Summarise {{ note }} and {{note}}", user_variables={"note": "it"})
    assert b.generated[0][0] == [{"role": "user", "content": "Summarise it and it"}]


def test_errors_are_clear_and_leave_the_context_alone():
    b = engine(probs={("engine", None): QUARTER})
    m = Session(b)
    with pytest.raises(ConfigError, match="Nothing to validate"):
        m.validate([SEED_REQ])
    with pytest.raises(RequirementError, match="Quote the label"):
        m.instruct("Summarise.", requirements=["The summary is good."])
    with pytest.raises(RequirementError, match="unknown label"):
        m.validate([req("x", accept=["gearbox"])], output=NOTE)
    assert len(m.ctx) == 0 and b.checked == []


def test_an_adapter_removed_after_routing_is_the_backends_clear_error():
    class Racing(FakeBackend):
        def adapter_labels(self) -> dict[str, list[str]]:
            snapshot = super().adapter_labels()
            self.labels.clear()  # another thread removes the adapter right after the snapshot
            return snapshot

    b = Racing(labels={"engine": list(LABELS)}, probs={("engine", None): QUARTER})
    with pytest.raises(AdapterError, match="No adapter named 'engine'"):
        Session(b).validate([SEED_REQ], output=NOTE)


def test_the_interface_and_the_programs_import_no_torch():
    """A backend that only talks HTTP (DESIGN §11) implements `Backend` without loading torch."""
    code = "import sys, validora.backends.base, validora.programs.session; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
