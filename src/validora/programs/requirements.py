"""Requirements and their validation: Python checks, adapter checks, or the base model as a yes/no judge.

Which labels a description lets pass is read by the closed grammar in `programs/grammar.py` (DESIGN §8):
a few forms are read, everything else is refused. Here: the `Requirement` record, routing a
requirement to its judge, and the results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from validora.backends.base import Backend, CheckSpec
from validora.errors import ConfigError, RequirementError
from validora.programs.grammar import find_mentions, read_description, refuse_reading

if TYPE_CHECKING:
    from validora.backends.base import CheckResult


@dataclass
class ValidationResult:
    passed: bool
    score: float  # probability (or 1/0) that the requirement holds
    reason: str
    requirement: str
    label: str | None = None  # the adapter's most probable label
    probs: dict[str, float] = field(default_factory=dict)
    adapter: str | None = None  # adapter name, "base-model judge" or "python"
    seconds: float = 0.0

    def __bool__(self) -> bool:
        return self.passed


ValidationFn = Callable[[str], "bool | tuple[bool, str] | ValidationResult"]


@dataclass
class Requirement:
    description: str
    adapter: str | None = None
    accept: Sequence[str] | None = None
    reject: Sequence[str] | None = None
    threshold: float = 0.5
    validation_fn: ValidationFn | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= 1:
            raise RequirementError(f"threshold must be between 0 and 1, not {self.threshold}.")
        if self.accept is not None and self.reject is not None:
            raise RequirementError("Give accept= or reject=, not both.")
        for given, name, outcome in ((self.accept, "accept", "fail"), (self.reject, "reject", "pass")):
            if isinstance(given, str):
                raise RequirementError(f"{name}= takes a list of labels, e.g. {name}=[{given!r}].")
            if given is not None and not list(given):
                raise RequirementError(
                    f"{name}=[] would make the check always {outcome}; name at least one label."
                )

    def passing_labels(self, labels: Sequence[str]) -> set[str]:
        """Which of an adapter's labels satisfy this requirement (DESIGN §8, in order)."""
        labels, known = list(labels), set(labels)
        for given, name in ((self.accept, "accept"), (self.reject, "reject")):
            if given is not None:
                unknown = sorted(set(given) - known)
                if unknown:
                    raise RequirementError(
                        f"{name}= names unknown label(s) {unknown}; the adapter has {labels}."
                    )
        if self.accept is not None or self.reject is not None:
            passing = set(self.accept) if self.accept is not None else known - set(self.reject or ())
            if not passing or passing == known:
                which, outcome = ("no label", "fail") if not passing else ("every label", "pass")
                raise RequirementError(
                    f"accept=/reject= let {which} of {labels} pass: the check would always {outcome}; "
                    "name the labels that pass in accept=[...] or those that fail in reject=[...]."
                )
            return passing
        passing = read_description(self.description, labels)
        if not passing or passing == known:
            which, outcome = ("no label", "fail") if not passing else ("every label", "pass")
            refuse_reading(
                self.description, labels, f"it lets {which} pass, so the check would always {outcome}"
            )
        return passing


def req(
    description: str,
    *,
    adapter: str | None = None,
    accept: Sequence[str] | None = None,
    reject: Sequence[str] | None = None,
    threshold: float = 0.5,
    validation_fn: ValidationFn | None = None,
) -> Requirement:
    """A requirement on generated output; see DESIGN §8 for how it is judged."""
    return Requirement(description, adapter, accept, reject, threshold, validation_fn)


def choose_adapter(requirement: Requirement, adapters: dict[str, list[str]]) -> str:
    """`adapter=` if given, else the only adapter, else the one whose labels the description names.

    An adapter whose labels are quoted beats one whose labels are only written out; everyday words
    ("no") never name a label, so they never route a requirement."""
    if requirement.adapter is not None:
        if requirement.adapter not in adapters:
            raise RequirementError(
                f"adapter={requirement.adapter!r} is not added to the backend; added: {sorted(adapters)}."
            )
        return requirement.adapter
    if len(adapters) == 1:
        return next(iter(adapters))
    named = {name: find_mentions(requirement.description, labels) for name, labels in adapters.items()}
    matching = [name for name, found in named.items() if any(m.quoted for m in found)]
    matching = matching or [name for name, found in named.items() if found]
    if len(matching) == 1:
        return matching[0]
    raise RequirementError(
        f"Several adapters could judge {requirement.description!r} ({sorted(matching or adapters)}); "
        "pass adapter=... to choose one, or quote one of its labels."
    )


@dataclass(frozen=True)
class PythonRoute:
    """The requirement's `validation_fn` decides; no model is asked."""


@dataclass(frozen=True)
class AdapterRoute:
    """An added adapter judges; the requirement passes with these of its labels."""

    adapter: str
    passing: frozenset[str]


@dataclass(frozen=True)
class JudgeRoute:
    """The base model answers yes or no (the backend's check with adapter None)."""

    passing: frozenset[str] = frozenset({"yes"})


Route = PythonRoute | AdapterRoute | JudgeRoute


def route(requirement: Requirement, label_sets: dict[str, list[str]], prefer_adapters: bool) -> Route:
    """Who judges a requirement: its validation_fn, an adapter (named, or chosen by labels), or the judge.

    `label_sets` holds the added adapters' labels; without any, or with `prefer_adapters` False, only a
    requirement that names its adapter goes to one.
    """
    if requirement.validation_fn is not None:
        return PythonRoute()
    if (label_sets and prefer_adapters) or requirement.adapter is not None:
        name = choose_adapter(requirement, label_sets)
        return AdapterRoute(name, frozenset(requirement.passing_labels(label_sets[name])))
    return JudgeRoute()


def _python_result(requirement: Requirement, output: str) -> ValidationResult:
    if requirement.validation_fn is None:
        raise ConfigError(f"Requirement {requirement.description!r} has no validation_fn to run.")
    started = time.perf_counter()
    value = requirement.validation_fn(output)
    seconds = time.perf_counter() - started
    if isinstance(value, ValidationResult):
        return value
    passed, reason = value if isinstance(value, tuple) else (bool(value), "")
    return ValidationResult(
        passed=bool(passed),
        score=1.0 if passed else 0.0,
        reason=reason or f"validation_fn returned {passed}",
        requirement=requirement.description,
        adapter="python",
        seconds=seconds,
    )


def _model_result(
    requirement: Requirement, plan: AdapterRoute | JudgeRoute, check: CheckResult
) -> ValidationResult:
    passing = plan.passing
    score = check.scores.prob(sorted(passing))
    passed = score >= requirement.threshold
    if isinstance(plan, AdapterRoute):
        who, name = f"adapter {plan.adapter!r}", plan.adapter
    else:
        who, name = "the base model (yes/no judge)", "base-model judge"
    failing = ", ".join(label for label in check.scores.probs if label not in passing)
    return ValidationResult(
        passed=passed,
        score=score,
        reason=(
            f"{who} gives P({' or '.join(sorted(passing))}) = {score:.3f} "
            f"{'≥' if passed else '<'} {requirement.threshold} (failing labels: {failing}); "
            f"most probable: {check.scores.label}"
        ),
        requirement=requirement.description,
        label=check.scores.label,
        probs=check.scores.probs,
        adapter=name,
        seconds=check.seconds,
    )


def validate_output(
    backend: Backend, output: str, requirements: Sequence[Requirement]
) -> list[ValidationResult]:
    """Judge one output against every requirement; all model checks share one prefix computation."""
    label_sets = backend.adapter_labels()  # one snapshot, taken under the backend's lock
    prefer = backend.default_to_constraint_checking_alora
    plans = [route(r, label_sets, prefer) for r in requirements]
    model_checks: list[CheckSpec] = [
        (p.adapter if isinstance(p, AdapterRoute) else None, r.description)
        for p, r in zip(plans, requirements, strict=True)
        if not isinstance(p, PythonRoute)
    ]
    scored = iter(backend.check(output, model_checks) if model_checks else [])
    return [
        _python_result(r, output) if isinstance(plan, PythonRoute) else _model_result(r, plan, next(scored))
        for plan, r in zip(plans, requirements, strict=True)
    ]
