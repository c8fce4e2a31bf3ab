"""Reading requirement text is exact or refused (DESIGN §8): every reading here is pure Python, no model."""

import pytest

from validora.errors import RequirementError
from validora.programs.requirements import choose_adapter, req

from ..conftest import LABELS

ALL = set(LABELS)
YES_NO = ["yes", "no"]
MULTI_WORD = ["piston rings", "rings", "rod"]

# (description, labels, passing labels). Issue 9's examples first; tests/programs/test_grammar.py has
# the grammar's full table (issue 20).
READINGS = [
    ("must be 'piston_rings' and must not be 'no_failure'", LABELS, {"piston_rings"}),
    ("should not be anything other than 'no_failure'", LABELS, {"no_failure"}),
    ("must be 'connecting_rod', not 'no_failure'", LABELS, {"connecting_rod"}),
    ("must be piston rings", MULTI_WORD, {"piston rings"}),
    ("must be anything other than 'no_failure'", LABELS, ALL - {"no_failure"}),
    # negation governs only its own label
    ("The failure mode must not be 'no_failure'.", LABELS, ALL - {"no_failure"}),
    ("The failure mode mustn't be 'no_failure'", LABELS, ALL - {"no_failure"}),
    ("The failure mode can’t be ‘no_failure’", LABELS, ALL - {"no_failure"}),
    ("must never be 'no_failure'", LABELS, ALL - {"no_failure"}),
    ("must no longer be 'no_failure'", LABELS, ALL - {"no_failure"}),
    ("must be 'connecting_rod' not 'no_failure'", LABELS, {"connecting_rod"}),
    ("must be 'piston_rings' but not 'no_failure'", LABELS, {"piston_rings"}),
    ("The failure must be 'piston_rings' (not 'connecting_rod')", LABELS, {"piston_rings"}),
    ("must be 'piston_rings'; it must not be 'connecting_rod'", LABELS, {"piston_rings"}),
    ("The failure must be 'piston_rings' rather than 'connecting_rod'", LABELS, {"piston_rings"}),
    # exclusions, and a negation cancelling an exclusion
    ("Anything other than mini_carburetor", LABELS, ALL - {"mini_carburetor"}),
    ("Any label but 'no_failure'", LABELS, ALL - {"no_failure"}),
    ("must be anything but 'no_failure'", LABELS, ALL - {"no_failure"}),
    ("cannot be anything except 'no_failure'", LABELS, {"no_failure"}),
    # lists take the sense of their first label
    ('Must be "connecting_rod" or "piston_rings"', LABELS, {"connecting_rod", "piston_rings"}),
    ("Either 'piston_rings' or 'connecting_rod'", LABELS, {"piston_rings", "connecting_rod"}),
    ("must be one of 'piston_rings', 'connecting_rod'", LABELS, {"piston_rings", "connecting_rod"}),
    ("must not be 'piston_rings', 'connecting_rod' or 'mini_carburetor'", LABELS, {"no_failure"}),
    ("Neither 'no_failure' nor 'mini_carburetor'", LABELS, {"piston_rings", "connecting_rod"}),
    ("must be none of 'no_failure', 'mini_carburetor'", LABELS, {"piston_rings", "connecting_rod"}),
    (
        "Must be 'piston_rings', 'connecting_rod', or 'mini_carburetor', never 'no_failure'",
        LABELS,
        ALL - {"no_failure"},
    ),
    # each quoting style, and case
    ('must be "piston_rings"', LABELS, {"piston_rings"}),
    ("must be `piston_rings`", LABELS, {"piston_rings"}),
    ("must be “piston_rings” or ‘connecting_rod’", LABELS, {"piston_rings", "connecting_rod"}),
    ("must be 'Piston_Rings'", LABELS, {"piston_rings"}),
    ("must not be NO_FAILURE", LABELS, ALL - {"no_failure"}),
    ("must be 'Yes'", ["Yes", "yes", "maybe"], {"Yes"}),
    ("must be classified as 'piston_rings'", LABELS, {"piston_rings"}),
    ("'piston_rings'", LABELS, {"piston_rings"}),
    ("must be 'piston_rings' and nothing else", LABELS, {"piston_rings"}),
    # multi-word labels: the longest whole phrase wins
    ("must be rings", MULTI_WORD, {"rings"}),
    ("must be Piston Rings", MULTI_WORD, {"piston rings"}),
    ("must not be piston rings", MULTI_WORD, {"rings", "rod"}),
    ("must be 'piston rings'", MULTI_WORD, {"piston rings"}),
    # yes/no-like labels: the positive label means the requirement holds; only quoted labels are read
    ("Is the summary polite?", YES_NO, {"yes"}),
    ("must be 'no'", YES_NO, {"no"}),
    ("must not be 'yes'", YES_NO, {"no"}),
    # issue 20: a label written out in a form is read as what the form says; before, these were refused
    ("must not be 'no_failure' or mini_carburetor", LABELS, {"piston_rings", "connecting_rod"}),
    ("must be 'piston_rings', not no_failure", LABELS, {"piston_rings"}),
    ("Must not be compliant", ["non_compliant", "compliant"], {"non_compliant"}),
    ("The JSON must never be valid", ["valid", "invalid"], {"invalid"}),
]

# (description, labels, words the error must contain): refused, never guessed.
REFUSED = [
    ("Unless the engine is not running the failure must be 'piston_rings'", LABELS, "'unless'"),
    # issue 20: before, these were read; a condition, a negating word or a label outside a form is refused
    ("Unless the engine is not running, the failure must be 'piston_rings'", LABELS, "'unless'"),
    ("must be 'piston_rings' if the engine is not running", LABELS, "stops reading at 'if"),
    ("The summary must contain no profanity.", YES_NO, "'no' can negate"),
    ("No profanity", ["Yes", "No"], "'no' can negate"),
    ("Compliant with house style", ["non_compliant", "compliant"], "stops reading at 'with"),
    ("The JSON must be valid and must not contain comments", ["valid", "invalid"], "'contain comments'"),
    ("must not fail", ["pass", "fail"], "'be' is expected"),
    ("must not be 'piston_rings', 'connecting_rod', 'mini_carburetor' or 'no_failure'", LABELS, "no label"),
    ("must be 'piston_rings', 'connecting_rod', 'mini_carburetor' or 'no_failure'", LABELS, "every label"),
    ("must be 'yes' or 'no'", YES_NO, "every label"),
    ("must be 'piston_rings' and 'connecting_rod'", LABELS, "one label"),
    (
        "must be 'piston_rings' or not 'no_failure'",
        LABELS,
        "or not",
    ),
    ("must be 'piston_rings' and must not be 'piston_rings'", LABELS, "no label"),
    ("must not be not 'no_failure'", LABELS, "quoted label"),
    ("need not be 'no_failure'", LABELS, "'need' does not begin"),
    ("doesn't have to be 'no_failure'", LABELS, "doesn't"),
    ("must not only be 'piston_rings'", LABELS, "'be' is expected"),
    ("'no_failure' is forbidden", LABELS, "forbidden"),
    ("It is false that it must be 'no_failure'", LABELS, "false"),
    ("It is untrue that it must be 'no_failure'", LABELS, "untrue"),
    ("must fail to be 'no_failure'", LABELS, "fail"),
    ("must stop being 'no_failure'", LABELS, "stop"),
    ("must rarely be 'no_failure'", LABELS, "rarely"),
    ("It must be 'no_failure' — false", LABELS, "false"),
    ("'no_failure' must not appear", LABELS, "stops reading at 'must"),
    ("'no_failure' is acceptable", LABELS, "stops reading at 'is"),
    ("'piston_rings' wins", LABELS, "stops reading at 'wins"),
    ("The failure mode must differ from 'no_failure'", LABELS, "'be' is expected"),
    ("Must avoid 'no_failure'", LABELS, "avoid"),
    ("Is it 'piston_rings'?", LABELS, "stops reading at \"it 'piston"),
    ("It is not the case that the label is 'piston_rings'", LABELS, "the case that"),
    ("The label must be 'piston_rings'. This is not acceptable.", LABELS, "This is not"),
    ("must be 'piston_rings' unless it is 'connecting_rod'", LABELS, "unless it is"),
    ("must be 'piston_rings', no exceptions", LABELS, "no exceptions"),
    ("The summary is good.", LABELS, "names none"),
    ("must be 'piston_ring'", LABELS, "names none"),
    ("must be 'YES'", ["Yes", "yes", "maybe"], "names none"),
]


@pytest.mark.parametrize(("description", "labels", "passing"), READINGS)
def test_requirement_text_is_read_exactly(description, labels, passing):
    assert req(description).passing_labels(labels) == passing


@pytest.mark.parametrize(("description", "labels", "says"), REFUSED)
def test_unclear_requirement_text_is_refused_with_a_fix(description, labels, says):
    with pytest.raises(RequirementError) as err:
        req(description).passing_labels(labels)
    message = str(err.value)
    assert says in message
    assert "Quote the label" in message and "accept=[...]" in message and "reject=[...]" in message
    assert f"must be '{labels[0]}'" in message and f"must not be '{labels[-1]}'" in message  # forms it reads


@pytest.mark.parametrize(
    ("kwargs", "passing"),
    [
        ({"accept": ["no_failure"]}, {"no_failure"}),
        ({"accept": ["piston_rings", "connecting_rod"]}, {"piston_rings", "connecting_rod"}),
        ({"reject": ["no_failure"]}, ALL - {"no_failure"}),
    ],
)
def test_accept_and_reject_override_the_text(kwargs, passing):
    # The text alone would be refused (it names no label); accept=/reject= decide.
    assert req("The summary is good.", **kwargs).passing_labels(LABELS) == passing


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"accept": []}, "always fail"),
        ({"reject": []}, "always pass"),
        ({"accept": "no_failure"}, "list of labels"),
        ({"accept": ["a"], "reject": ["b"]}, "not both"),
        ({"threshold": 1.5}, "between 0 and 1"),
    ],
)
def test_accept_and_reject_that_decide_nothing_are_refused_at_once(kwargs, says):
    with pytest.raises(RequirementError, match=says):
        req("x", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"accept": LABELS}, "every label"),
        ({"reject": LABELS}, "no label"),
        ({"accept": ["gearbox"]}, "unknown label"),
        ({"reject": ["no_failure", "gearbox"]}, "unknown label"),
    ],
)
def test_accept_and_reject_are_checked_against_the_labels(kwargs, says):
    with pytest.raises(RequirementError, match=says):
        req("x", **kwargs).passing_labels(LABELS)


def test_mentions_never_count_ordinary_words_or_shorter_overlaps():
    # "no" unquoted names no label, so it routes nowhere; a yes/no set refuses the negating word
    with pytest.raises(RequirementError, match="'no' can negate"):
        req("The summary must contain no profanity.").passing_labels(YES_NO)
    with pytest.raises(RequirementError, match="pass adapter="):
        choose_adapter(req("The summary must contain no profanity."), {"a": YES_NO, "b": ["no", "x"]})
    assert req("must be 'no'").passing_labels(YES_NO) == {"no"}
    # "piston rings" is named, not the shorter "rings" inside it
    assert req("must be piston rings").passing_labels(MULTI_WORD) == {"piston rings"}
    # a quoted label wins over one only written out, and a written-out one counts on its own
    quoted_wins = {"a": LABELS, "b": ["no_failure", "x"]}
    assert choose_adapter(req("must be 'piston_rings', not no_failure"), quoted_wins) == "a"
    assert req("must not be no_failure").passing_labels(LABELS) == ALL - {"no_failure"}
    assert choose_adapter(req("must not be no_failure"), {"a": ["x", "y"], "b": LABELS}) == "b"


ADAPTERS = {"engine": LABELS, "profanity": YES_NO, "style": ["non_compliant", "compliant"]}


@pytest.mark.parametrize(
    ("description", "kwargs", "chosen"),
    [
        ("The failure mode must not be 'no_failure'.", {}, "engine"),
        ("must not be no_failure", {}, "engine"),
        ("must be 'no'", {}, "profanity"),
        ("must be 'no' and mention 'compliant'", {}, None),
        # quoted labels beat written-out ones
        ("must be 'piston_rings', never rod failures", {"adapters": {"a": LABELS, "b": ["rod", "x"]}}, "a"),
        ("The summary must contain no profanity.", {"adapter": "profanity"}, "profanity"),
        # before: routed to the yes/no adapter because of the word "no"
        ("The summary must contain no profanity.", {}, None),
        ("Compliant with house style", {}, None),
    ],
)
def test_choose_adapter_routes_only_on_label_mentions(description, kwargs, chosen):
    adapters = kwargs.pop("adapters", ADAPTERS)
    requirement = req(description, **kwargs)
    if chosen is None:
        with pytest.raises(RequirementError, match="pass adapter="):
            choose_adapter(requirement, adapters)
    else:
        assert choose_adapter(requirement, adapters) == chosen


def test_choose_adapter_checks_a_named_adapter_and_takes_the_only_one():
    assert choose_adapter(req("anything"), {"engine": LABELS}) == "engine"
    with pytest.raises(RequirementError, match="not added"):
        choose_adapter(req("x", adapter="gearbox"), ADAPTERS)
