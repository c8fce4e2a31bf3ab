"""Requirements and their validation: Python checks, adapter checks, or the base model as a yes/no judge."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from validora.errors import ConfigError

YES_LIKE = {"yes", "true", "pass", "passed", "valid", "compliant", "ok", "good", "1", "y"}
NO_LIKE = {"no", "false", "fail", "failed", "invalid", "non_compliant", "noncompliant", "bad", "0", "n"}
NEGATION = re.compile(
    r"\b(must\s+not|mustn't|should\s+not|shouldn't|cannot|can't|may\s+not|never|not\s+be|is\s+not|isn't|"
    r"other\s+than|anything\s+but|except|no\s+longer)\b",
    re.IGNORECASE,
)


class RequirementError(ConfigError):
    """A requirement cannot be judged as written; the message says how to fix it."""


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

    def passing_labels(self, labels: Sequence[str]) -> set[str]:
        """Which of an adapter's labels satisfy this requirement (DESIGN §8, in order)."""
        known = set(labels)
        for given, name in ((self.accept, "accept"), (self.reject, "reject")):
            if given is not None:
                unknown = sorted(set(given) - known)
                if unknown:
                    raise RequirementError(
                        f"{name}= names unknown label(s) {unknown}; the adapter has {list(labels)}."
                    )
        if self.accept is not None:
            return set(self.accept)
        if self.reject is not None:
            return known - set(self.reject)
        named = labels_named(self.description, labels)
        if named:
            return known - named if NEGATION.search(self.description) else named
        lowered = {label.lower(): label for label in labels}
        if set(lowered) <= YES_LIKE | NO_LIKE and set(lowered) & YES_LIKE:
            return {lowered[k] for k in lowered if k in YES_LIKE}
        raise RequirementError(
            f"Cannot tell which labels satisfy {self.description!r}: it names none of the adapter's labels "
            f"{list(labels)} and they are not yes/no-like. Quote the label in the description "
            f"(e.g. \"must not be '{labels[-1]}'\") or pass accept=[...] or reject=[...]."
        )


def labels_named(description: str, labels: Iterable[str]) -> set[str]:
    """Labels the description quotes; if it quotes none, labels it names as whole words."""
    quoted = set(re.findall(r"""['"`‘“]([^'"`’”]+)['"`’”]""", description))
    hits = {label for label in labels if label in quoted}
    if hits:
        return hits
    return {label for label in labels if re.search(rf"(?<![\w-]){re.escape(label)}(?![\w-])", description)}


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
    """`adapter=` if given, else the only adapter, else the one whose labels the description names."""
    if requirement.adapter is not None:
        if requirement.adapter not in adapters:
            raise RequirementError(
                f"adapter={requirement.adapter!r} is not added to the backend; added: {sorted(adapters)}."
            )
        return requirement.adapter
    if len(adapters) == 1:
        return next(iter(adapters))
    matching = [name for name, labels in adapters.items() if labels_named(requirement.description, labels)]
    if len(matching) == 1:
        return matching[0]
    raise RequirementError(
        f"Several adapters could judge {requirement.description!r} ({sorted(matching or adapters)}); "
        "pass adapter=... to choose one."
    )


def _python_result(requirement: Requirement, output: str) -> ValidationResult:
    assert requirement.validation_fn is not None
    started = time.perf_counter()
    value: Any = requirement.validation_fn(output)
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


def validate_output(backend: Any, output: str, requirements: Sequence[Requirement]) -> list[ValidationResult]:
    """Judge one output against every requirement; all model checks share one prefix computation."""
    use_adapters = bool(backend.adapters) and backend.default_to_constraint_checking_alora
    label_sets = {name: backend.labels(name) for name in backend.adapters}
    plans: list[tuple[str | None, set[str]] | None] = []
    for r in requirements:
        if r.validation_fn is not None:
            plans.append(None)
        elif use_adapters or r.adapter is not None:
            name = choose_adapter(r, label_sets)
            plans.append((name, r.passing_labels(label_sets[name])))
        else:
            plans.append((None, {"yes"}))
    model_checks = [(p[0], r.description) for p, r in zip(plans, requirements, strict=True) if p is not None]
    scored = iter(backend.check(output, model_checks) if model_checks else [])
    results = []
    for plan, r in zip(plans, requirements, strict=True):
        if plan is None:
            results.append(_python_result(r, output))
            continue
        name, passing = plan
        check = next(scored)
        score = check.scores.prob(sorted(passing))
        passed = score >= r.threshold
        who = f"adapter {name!r}" if name else "the base model (yes/no judge)"
        results.append(
            ValidationResult(
                passed=passed,
                score=score,
                reason=(
                    f"{who} gives P({' or '.join(sorted(passing))}) = {score:.3f} "
                    f"{'≥' if passed else '<'} {r.threshold}; most probable: {check.scores.label}"
                ),
                requirement=r.description,
                label=check.scores.label,
                probs=check.scores.probs,
                adapter=name or "base-model judge",
                seconds=check.seconds,
            )
        )
    return results
