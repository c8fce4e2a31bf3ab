"""The closed requirement grammar (issue 20, item 1): each phrasing has one acceptable reading, or refused.

Pure logic, no model. A reading is the set of labels that pass; REFUSED means a RequirementError that
shows forms the grammar reads and accept=/reject=.
"""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from validora.errors import RequirementError
from validora.programs.grammar import EXAMPLE_LABELS, FORMS, read_description
from validora.programs.requirements import req

REFUSED = "refused"
E = ["piston_rings", "connecting_rod", "mini_carburetor", "no_failure"]
ALL = set(E)
PR, CR, MC, NF = E
YN = ["yes", "no"]
TF = ["true", "false"]
ONE_ZERO = ["1", "0"]
PF = ["pass", "fail"]
COMPLIANT = ["compliant", "non_compliant"]
SAFE = ["safe", "unsafe"]
VALID = ["valid", "invalid"]
OK = ["ok", "not_ok"]
WORDS = ["piston rings", "rings", "rod"]  # labels that are English words, one inside another
FAILS = ["fail", "failure", "other"]  # substrings of each other, and a grammar word
CASES = ["Yes", "yes", "maybe"]  # labels that differ only by case

# The phrasings issue 20 found reading backwards: each is refused or read as written.
ISSUE = [
    ("It is not 'no_failure' but 'piston_rings'", E, REFUSED),
    ("must be nothing but 'no_failure'", E, REFUSED),
    ("nothing except 'no_failure'", E, REFUSED),
    ("failure mode != 'no_failure'", E, REFUSED),
    ("cant be 'no_failure'", E, REFUSED),
    ("must be 'no_failure'-free", E, REFUSED),
    ("must be non-compliant", COMPLIANT, {"non_compliant"}),
    ("The statement must be false.", TF, {"false"}),
    ("must be 0", ONE_ZERO, {"0"}),
]

POSITIVE = [
    ("must be 'piston_rings'", E, {PR}),
    ("The failure mode must be 'piston_rings'.", E, {PR}),
    ("The failure mode should be 'piston_rings'", E, {PR}),
    ("It shall be 'piston_rings'!", E, {PR}),
    ("The label will be 'piston_rings'", E, {PR}),
    ("The answer has to be 'piston_rings'", E, {PR}),
    ("The output needs to be 'piston_rings'", E, {PR}),
    ("It is 'piston_rings'", E, {PR}),
    ("The engine's failure is 'piston_rings'.", E, {PR}),
    ("must be classified as 'piston_rings'", E, {PR}),
    ("must be labelled 'piston_rings'", E, {PR}),
    ("must be labeled as 'piston_rings'", E, {PR}),
    ("must be predicted as 'piston_rings'", E, {PR}),
    ("must be marked as 'piston_rings'", E, {PR}),
    ("'piston_rings'", E, {PR}),
    ("'piston_rings' or 'connecting_rod'", E, {PR, CR}),
    ("must be piston_rings", E, {PR}),
    ("must be piston rings", E, {PR}),
    ("must be Piston-Rings", E, {PR}),
    ("MUST BE 'PISTON_RINGS'", E, {PR}),
    ("must be 'piston rings'", E, {PR}),
    ("must be 'piston-rings'", E, {PR}),
    ("must be 'piston_rings' or 'connecting_rod'", E, {PR, CR}),
    ("must be 'piston_rings', 'connecting_rod' or 'mini_carburetor'", E, {PR, CR, MC}),
    ("must be 'piston_rings', 'connecting_rod', or 'mini_carburetor'", E, {PR, CR, MC}),
    ("must be one of 'piston_rings', 'connecting_rod'", E, {PR, CR}),
    ("must be one of 'piston_rings' or 'connecting_rod'", E, {PR, CR}),
    ("One of 'piston_rings', 'connecting_rod'", E, {PR, CR}),
    ("must be any of 'piston_rings', 'connecting_rod'", E, {PR, CR}),
    ("Either 'piston_rings' or 'connecting_rod'", E, {PR, CR}),
    ("must be either 'piston_rings' or 'connecting_rod'", E, {PR, CR}),
    ("must be 'piston_rings' and nothing else", E, {PR}),
    ("must be 'piston_rings', and nothing else", E, {PR}),
    ("The failure mode is 'piston_rings'. It is not 'no_failure'.", E, {PR}),
]

NEGATED = [
    ("must not be 'no_failure'", E, ALL - {NF}),
    ("The failure mode must not be 'no_failure'.", E, ALL - {NF}),
    ("mustn't be 'no_failure'", E, ALL - {NF}),
    ("must never be 'no_failure'", E, ALL - {NF}),
    ("must no longer be 'no_failure'", E, ALL - {NF}),
    ("should not be 'no_failure'", E, ALL - {NF}),
    ("shouldn't be 'no_failure'", E, ALL - {NF}),
    ("shall not be 'no_failure'", E, ALL - {NF}),
    ("shan't be 'no_failure'", E, ALL - {NF}),
    ("will not be 'no_failure'", E, ALL - {NF}),
    ("won't be 'no_failure'", E, ALL - {NF}),
    ("cannot be 'no_failure'", E, ALL - {NF}),
    ("can not be 'no_failure'", E, ALL - {NF}),
    ("can't be 'no_failure'", E, ALL - {NF}),
    ("can’t be ‘no_failure’", E, ALL - {NF}),
    ("It is not 'no_failure'", E, ALL - {NF}),
    ("It isn't 'no_failure'", E, ALL - {NF}),
    ("It is never 'no_failure'", E, ALL - {NF}),
    ("The labels are not 'no_failure'", E, ALL - {NF}),
    ("The labels aren't 'no_failure'", E, ALL - {NF}),
    ("must not be classified as 'no_failure'", E, ALL - {NF}),
    ("must not be no_failure", E, ALL - {NF}),
    ("must not be no failure", E, ALL - {NF}),
    ("must not be 'no_failure' or 'mini_carburetor'", E, {PR, CR}),
    ("must not be 'no_failure', 'mini_carburetor' or 'connecting_rod'", E, {PR}),
    ("must not be one of 'no_failure', 'mini_carburetor'", E, {PR, CR}),
    ("must not be any of 'no_failure', 'mini_carburetor'", E, {PR, CR}),
    ("must not be either 'no_failure' or 'mini_carburetor'", E, {PR, CR}),
    ("must be neither 'no_failure' nor 'mini_carburetor'", E, {PR, CR}),
    ("Neither 'no_failure' nor 'mini_carburetor'", E, {PR, CR}),
    ("Neither 'no_failure', 'piston_rings' nor 'mini_carburetor'", E, {CR}),
    ("must be none of 'no_failure', 'mini_carburetor'", E, {PR, CR}),
    ("None of 'no_failure' or 'mini_carburetor'", E, {PR, CR}),
    ("anything but 'no_failure'", E, ALL - {NF}),
    ("Anything except 'no_failure'", E, ALL - {NF}),
    ("anything except for 'no_failure'", E, ALL - {NF}),
    ("anything other than 'no_failure'", E, ALL - {NF}),
    ("Anything other than mini_carburetor", E, ALL - {MC}),
    ("Any label but 'no_failure'", E, ALL - {NF}),
    ("any class other than 'no_failure'", E, ALL - {NF}),
    ("any value except 'no_failure' or 'piston_rings'", E, {CR, MC}),
    ("must be anything but 'no_failure'", E, ALL - {NF}),
    ("must be anything other than 'no_failure'", E, ALL - {NF}),
    ("should not be anything other than 'no_failure'", E, {NF}),
    ("cannot be anything except 'no_failure'", E, {NF}),
    ("must not be anything but 'no_failure'", E, {NF}),
]

COMPOSED = [
    ("must be 'piston_rings' and must not be 'no_failure'", E, {PR}),
    ("must be 'piston_rings' and it must not be 'no_failure'", E, {PR}),
    ("must be 'piston_rings'; it must not be 'no_failure'", E, {PR}),
    ("must be 'connecting_rod', not 'no_failure'", E, {CR}),
    ("must be 'connecting_rod' not 'no_failure'", E, {CR}),
    ("must be 'connecting_rod', never 'no_failure'", E, {CR}),
    ("must be 'connecting_rod' and not 'no_failure'", E, {CR}),
    ("must be 'connecting_rod' but not 'no_failure'", E, {CR}),
    ("must be 'connecting_rod', but not 'no_failure'", E, {CR}),
    ("must be 'piston_rings' rather than 'connecting_rod'", E, {PR}),
    ("must be 'piston_rings' instead of 'connecting_rod'", E, {PR}),
    ("The failure must be 'piston_rings' (not 'connecting_rod')", E, {PR}),
    ("must not be 'no_failure', not 'piston_rings'", E, {CR, MC}),
    ("must not be 'no_failure' and must not be 'piston_rings'", E, {CR, MC}),
    ("must be 'piston_rings' or 'connecting_rod', not 'connecting_rod'", E, {PR}),
    ("Must be 'piston_rings', 'connecting_rod', or 'mini_carburetor', never 'no_failure'", E, ALL - {NF}),
    ("must be 'piston_rings'. It must not be 'no_failure'.", E, {PR}),
    # the intersection is empty or holds every label: the caller refuses it
    ("must be 'piston_rings' and must not be 'piston_rings'", E, REFUSED),
    ("must be 'piston_rings', not 'piston_rings'", E, REFUSED),
    ("must be 'piston_rings', 'connecting_rod', 'mini_carburetor' or 'no_failure'", E, REFUSED),
    ("must not be 'piston_rings', 'connecting_rod', 'mini_carburetor' or 'no_failure'", E, REFUSED),
]

CONTRASTIVE = [
    ("It is not 'no_failure' but it is 'piston_rings'", E, REFUSED),
    ("not 'no_failure' but 'piston_rings'", E, REFUSED),
    ("must be 'piston_rings' but 'connecting_rod' is fine", E, REFUSED),
    ("must be 'piston_rings', but not really", E, REFUSED),
    ("must be 'piston_rings' unless it is 'connecting_rod'", E, REFUSED),
    ("must be 'piston_rings' if the engine runs", E, REFUSED),
    ("If the engine runs, it must be 'piston_rings'", E, REFUSED),
    ("Unless it runs, must be 'piston_rings'", E, REFUSED),
    ("must be 'piston_rings' only", E, REFUSED),
    ("must only be 'piston_rings'", E, REFUSED),
    ("only 'piston_rings'", E, REFUSED),
    ("must be just 'piston_rings'", E, REFUSED),
    ("must be nothing except 'no_failure'", E, REFUSED),
    ("nothing but 'no_failure'", E, REFUSED),
    ("nothing other than 'no_failure'", E, REFUSED),
    ("everything but 'no_failure'", E, REFUSED),
    ("everything except 'no_failure'", E, REFUSED),
    ("must be 'piston_rings' instead", E, REFUSED),
    ("instead of 'no_failure'", E, REFUSED),
    ("rather than 'no_failure'", E, REFUSED),
    ("must be 'piston_rings' or not 'no_failure'", E, REFUSED),
    ("must be 'piston_rings' and 'connecting_rod'", E, REFUSED),
    ("must be 'piston_rings', and 'connecting_rod'", E, REFUSED),
    ("must be one of 'piston_rings' and 'connecting_rod'", E, REFUSED),
    ("must not be 'no_failure' and 'piston_rings'", E, REFUSED),
    ("must not be neither 'no_failure' nor 'piston_rings'", E, REFUSED),
    ("must not be none of 'no_failure'", E, REFUSED),
    ("must not be not 'no_failure'", E, REFUSED),
    ("It is not the case that it is 'piston_rings'", E, REFUSED),
    ("It is false that it must be 'no_failure'", E, REFUSED),
    ("It is untrue that it must be 'no_failure'", E, REFUSED),
    ("must be 'piston_rings' — false", E, REFUSED),
    ("must be 'piston_rings'. Not really.", E, REFUSED),
    ("must be 'piston_rings'. This is not acceptable.", E, REFUSED),
    ("must be 'piston_rings', no exceptions", E, REFUSED),
    ("must be 'piston_rings' without 'no_failure'", E, REFUSED),
    ("must be without 'no_failure'", E, REFUSED),
    ("must lack 'no_failure'", E, REFUSED),
    ("must avoid 'no_failure'", E, REFUSED),
    ("must differ from 'no_failure'", E, REFUSED),
    ("must be different from 'no_failure'", E, REFUSED),
    ("must be other than 'no_failure'", E, REFUSED),
    ("must be less 'no_failure'", E, REFUSED),
    ("'no_failure' is forbidden", E, REFUSED),
    ("'no_failure' must not appear", E, REFUSED),
    ("'no_failure' is acceptable", E, REFUSED),
    ("'no_failure' is wrong", E, REFUSED),
    ("'piston_rings' wins", E, REFUSED),
    ("Is it 'piston_rings'?", E, REFUSED),
    ("must be 'piston_rings'?", E, REFUSED),
    ("need not be 'no_failure'", E, REFUSED),
    ("doesn't have to be 'no_failure'", E, REFUSED),
    ("does not need to be 'no_failure'", E, REFUSED),
    ("must not only be 'piston_rings'", E, REFUSED),
    ("may not be 'no_failure'", E, REFUSED),
    ("might be 'no_failure'", E, REFUSED),
    ("could be 'no_failure'", E, REFUSED),
    ("must rarely be 'no_failure'", E, REFUSED),
    ("must hardly be 'no_failure'", E, REFUSED),
    ("must fail to be 'no_failure'", E, REFUSED),
    ("must stop being 'no_failure'", E, REFUSED),
    ("must be at least 'piston_rings'", E, REFUSED),
    ("at most 'piston_rings'", E, REFUSED),
    ("The non-engine must be 'piston_rings'", E, REFUSED),
    ("The unrelated mode must be 'piston_rings'", E, REFUSED),
    ("An invalid mode must be 'piston_rings'", E, REFUSED),
    ("The faultless engine must be 'piston_rings'", E, REFUSED),
    ("The error-free engine must be 'piston_rings'", E, REFUSED),
    ("must be 'no_failure'-less", E, REFUSED),
    ("must be 'no_failure'free", E, REFUSED),
    ("must be free of 'no_failure'", E, REFUSED),
    ("must be the opposite of 'no_failure'", E, REFUSED),
    ("must be 'piston_rings' otherwise 'connecting_rod'", E, REFUSED),
    ("must be 'piston_rings' or else 'connecting_rod'", E, REFUSED),
    ("must be 'piston_rings' else 'connecting_rod'", E, REFUSED),
    ("must be 'piston_rings' when it runs", E, REFUSED),
    ("must be 'piston_rings' because it runs", E, REFUSED),
    ("must be 'piston_rings' (or not)", E, REFUSED),
    ("must be 'piston_rings' (", E, REFUSED),
    ("The failure must be 'piston_rings' (not)", E, REFUSED),
    ("must be a 'piston_rings'", E, REFUSED),
    ("The piston rings must be 'rod'", WORDS, REFUSED),
]

CONTRACTED = [
    ("cant be 'no_failure'", E, REFUSED),
    ("cannt be 'no_failure'", E, REFUSED),
    ("It isnt 'no_failure'", E, REFUSED),
    ("It aint 'no_failure'", E, REFUSED),
    ("must'nt be 'no_failure'", E, REFUSED),
    ("mustnt be 'no_failure'", E, REFUSED),
    ("shouldnt be 'no_failure'", E, REFUSED),
    ("wont be 'no_failure'", E, REFUSED),
    ("dont be 'no_failure'", E, REFUSED),
    ("don't be 'no_failure'", E, REFUSED),
    ("Don’t be 'no_failure'", E, REFUSED),
    ("doesnt equal 'no_failure'", E, REFUSED),
    ("isn’t 'no_failure'", E, ALL - {NF}),
    ("It isn’t 'no_failure'", E, ALL - {NF}),
    ("It can’t be 'no_failure'", E, ALL - {NF}),
    ("It won’t be 'no_failure'", E, ALL - {NF}),
    ("It mustn’t be 'no_failure'", E, ALL - {NF}),
    ("It shouldn’t be 'no_failure'", E, ALL - {NF}),
    ("It aren't 'no_failure'", E, ALL - {NF}),
    ("n't 'no_failure'", E, REFUSED),
]

SYMBOLIC = [
    ("failure mode != 'no_failure'", E, REFUSED),
    ("failure mode == 'no_failure'", E, REFUSED),
    ("failure mode = 'no_failure'", E, REFUSED),
    ("failure mode <> 'no_failure'", E, REFUSED),
    ("!'no_failure'", E, REFUSED),
    ("~'no_failure'", E, REFUSED),
    ("-'no_failure'", E, REFUSED),
    ("must be !'no_failure'", E, REFUSED),
    ("must be 'piston_rings' | 'connecting_rod'", E, REFUSED),
    ("must be 'piston_rings' / 'connecting_rod'", E, REFUSED),
    ("must be 'piston_rings' & 'connecting_rod'", E, REFUSED),
    ("must be 'piston_rings' && !'no_failure'", E, REFUSED),
    ("label: 'piston_rings'", E, REFUSED),
    ("label -> 'piston_rings'", E, REFUSED),
    ("must be ≠ 'no_failure'", E, REFUSED),
    ("must be 'piston_rings' * 2", E, REFUSED),
    ("must be not('no_failure')", E, REFUSED),
    ("must be 'piston_rings'...", E, REFUSED),
    ("must be 'piston_rings'.", E, {PR}),
    ("must be 'piston_rings'!", E, {PR}),
    ("must be 'piston_ring'", E, REFUSED),
    ("must be 'gearbox'", E, REFUSED),
    ("must be 'piston_rings", E, REFUSED),
    ("must be 'piston_rings\"", E, REFUSED),
    ("must be “piston_rings'", E, REFUSED),
]

YES_NO_SETS = [
    ("Is the summary polite?", YN, {"yes"}),
    ("The summary is polite.", YN, {"yes"}),
    ("The summary names the engine part", YN, {"yes"}),
    ("The summary must contain no profanity.", YN, REFUSED),
    ("No profanity", YN, REFUSED),
    ("The summary is not rude", YN, REFUSED),
    ("The summary isn't rude", YN, REFUSED),
    ("The summary isnt rude", YN, REFUSED),
    ("The summary is never rude", YN, REFUSED),
    ("The summary is free of profanity", YN, REFUSED),
    ("The summary is profanity-free", YN, REFUSED),
    ("The summary is harmless", YN, REFUSED),
    ("The summary is impolite", YN, REFUSED),
    ("The summary is unsafe", YN, REFUSED),
    ("The summary is nonsense", YN, REFUSED),
    ("The summary only mentions parts", YN, REFUSED),
    ("The summary mentions nothing rude", YN, REFUSED),
    ("The summary is polite unless quoted", YN, REFUSED),
    ("The summary is polite if short", YN, REFUSED),
    ("The summary is polite but short", YN, REFUSED),
    ("The summary lacks rudeness", YN, REFUSED),
    ("The summary has zero typos", YN, REFUSED),
    ("The summary is wrong", YN, REFUSED),
    ("The summary is correct", YN, REFUSED),
    ("The statement is true", YN, REFUSED),
    ("The statement is false", YN, REFUSED),
    ("The answer is yes", YN, {"yes"}),
    ("The answer is no", YN, REFUSED),
    ("The summary != rude", YN, REFUSED),
    ("must be 'no'", YN, {"no"}),
    ("must be 'yes'", YN, {"yes"}),
    ("must not be 'yes'", YN, {"no"}),
    ("must not be 'no'", YN, {"yes"}),
    ('must be "No"', YN, {"no"}),
    ("must be 'yes' or 'no'", YN, REFUSED),
    ("must be yes", YN, {"yes"}),
    ("must be no", YN, REFUSED),
    ("The statement must be false.", TF, {"false"}),
    ("The statement must be true.", TF, {"true"}),
    ("The statement must not be false.", TF, {"true"}),
    ("The statement must be 'false'", TF, {"false"}),
    ("The statement is false", TF, {"false"}),
    ("The statement holds", TF, {"true"}),
    ("The statement is untrue", TF, REFUSED),
    ("The summary is polite", TF, {"true"}),
    ("must be 0", ONE_ZERO, {"0"}),
    ("must be 1", ONE_ZERO, {"1"}),
    ("must not be 0", ONE_ZERO, {"1"}),
    ("must be '0'", ONE_ZERO, {"0"}),
    ("must be zero", ONE_ZERO, REFUSED),
    ("The summary is polite", ONE_ZERO, {"1"}),
    ("must fail", PF, REFUSED),
    ("must not fail", PF, REFUSED),
    ("must be 'fail'", PF, {"fail"}),
    ("must be fail", PF, {"fail"}),
    ("It must pass", PF, REFUSED),
    ("The test passes", PF, REFUSED),
    ("The summary is polite", PF, {"pass"}),
    ("must be non-compliant", COMPLIANT, {"non_compliant"}),
    ("must be non compliant", COMPLIANT, {"non_compliant"}),
    ("must be noncompliant", COMPLIANT, REFUSED),
    ("must be Non_Compliant", COMPLIANT, {"non_compliant"}),
    ("must be compliant", COMPLIANT, {"compliant"}),
    ("Must not be compliant", COMPLIANT, {"non_compliant"}),
    ("must not be non-compliant", COMPLIANT, {"compliant"}),
    ("Compliant with house style", COMPLIANT, REFUSED),
    ("The text follows house style", COMPLIANT, {"compliant"}),
    ("The text is in compliance", COMPLIANT, REFUSED),
    ("must be unsafe", SAFE, {"unsafe"}),
    ("must be safe", SAFE, {"safe"}),
    ("must not be unsafe", SAFE, {"safe"}),
    ("The reply is unsafe", SAFE, {"unsafe"}),
    ("The reply is harmful", SAFE, REFUSED),  # paraphrases 'unsafe': never read as the statement holding
    ("The reply must be dangerous", SAFE, REFUSED),
    ("The reply is secure", SAFE, REFUSED),
    ("must be nay", YN, REFUSED),
    ("must be affirmative", YN, REFUSED),
    ("The claim is a lie", TF, REFUSED),
    ("The JSON is malformed", VALID, REFUSED),
    ("The text violates house style", COMPLIANT, REFUSED),
    ("The answer contains errors", ["correct", "incorrect"], REFUSED),
    ("The answer cites a source", ["correct", "incorrect"], {"correct"}),
    ("The reply is harmless", SAFE, REFUSED),
    ("The JSON must be invalid", VALID, {"invalid"}),
    ("The JSON must never be valid", VALID, {"invalid"}),
    ("The JSON must be valid and must not contain comments", VALID, REFUSED),
    ("The JSON parses", VALID, {"valid"}),
    ("must be not_ok", OK, {"not_ok"}),
    ("must be not ok", OK, {"not_ok"}),
    ("must be 'not ok'", OK, {"not_ok"}),
    ("must not be ok", OK, {"not_ok"}),
    ("must be ok", OK, {"ok"}),
    ("The reply is okay", OK, REFUSED),
]

WORD_LABELS = [
    ("must be piston rings", WORDS, {"piston rings"}),
    ("must be rings", WORDS, {"rings"}),
    ("must be 'rings'", WORDS, {"rings"}),
    ("must be Piston Rings", WORDS, {"piston rings"}),
    ("must not be piston rings", WORDS, {"rings", "rod"}),
    ("must not be rings", WORDS, {"piston rings", "rod"}),
    ("must be 'piston rings' or rod", WORDS, {"piston rings", "rod"}),
    ("must be piston-rings", WORDS, {"piston rings"}),
    ("must be piston", WORDS, REFUSED),
    ("must be 'piston'", WORDS, REFUSED),
    ("must be ring", WORDS, REFUSED),
    ("must be rings of piston", WORDS, REFUSED),
    ("must be 'fail'", FAILS, {"fail"}),
    ("must be 'failure'", FAILS, {"failure"}),
    ("must be failure", FAILS, {"failure"}),
    ("must not be 'fail'", FAILS, {"failure", "other"}),
    ("must be 'other'", FAILS, {"other"}),
    ("must be other", FAILS, REFUSED),
    ("must be 'failures'", FAILS, REFUSED),
    ("must be 'Yes'", CASES, {"Yes"}),
    ("must be 'yes'", CASES, {"yes"}),
    ("must be 'YES'", CASES, REFUSED),
    ("must be yes", CASES, REFUSED),
    ("must be 'maybe'", CASES, {"maybe"}),
    ("must be MAYBE", CASES, {"maybe"}),
    ("The summary is good.", E, REFUSED),
    ("", E, REFUSED),
    ("   ", E, REFUSED),
    ("must be", E, REFUSED),
    ("must not be", E, REFUSED),
]


def quote_variants() -> list[tuple[str, list[str], object]]:
    """Each core form with each quote style and in upper, lower and title case."""
    forms = [
        ("must be {a}", {PR}),
        ("must not be {b}", ALL - {NF}),
        ("must be {a} or {c}", {PR, CR}),
        ("must be anything except {b}", ALL - {NF}),
        ("must be neither {b} nor {a}", {CR, MC}),
        ("should not be anything other than {b}", {NF}),
        ("must be {a}, not {b}", {PR}),
        ("must be {a} unless {b}", REFUSED),
        ("It is not {b} but {a}", REFUSED),
        ("must be nothing but {b}", REFUSED),
    ]
    quotes = [("'", "'"), ('"', '"'), ("`", "`"), ("‘", "’"), ("“", "”")]
    out = []
    for template, reading in forms:
        for left, right in quotes:
            labels = {k: f"{left}{v}{right}" for k, v in {"a": PR, "b": NF, "c": CR}.items()}
            text = template.format(**labels)
            out += [(text, E, reading), (text.upper(), E, reading), (text.title(), E, reading)]
    return out


def unique(*tables: list) -> list[tuple[str, list[str], object]]:
    """The tables joined, each (phrasing, labels) once; a phrasing listed twice must agree with itself."""
    seen: dict[tuple[str, tuple[str, ...]], object] = {}
    for text, labels, expected in (row for table in tables for row in table):
        assert seen.setdefault((text, tuple(labels)), expected) == expected, text
    return [(text, list(labels), expected) for (text, labels), expected in seen.items()]


# What a hostile review of the grammar found reading wrong (each now refused or read as written).
SIGNED = ["+1", "-1"]
REVIEW = [
    # separators at a label's ends are part of it: "-1" is not "1", "B-" is not "B"
    ("must be 1", SIGNED, REFUSED),
    ("must be '1'", SIGNED, REFUSED),
    ("must not be 1", SIGNED, REFUSED),
    ("must be '+1'", SIGNED, {"+1"}),
    ("must be '-1'", SIGNED, {"-1"}),
    ("must be 'B'", ["B+", "B-"], REFUSED),
    ("must be 'no'", ["no-", "yes"], REFUSED),
    # a label of separators only is no word (it crashed every reading)
    ("must be 'x'", ["x", "-"], {"x"}),
    ("must be 'x'", ["x", " "], {"x"}),
    ("must be 'pass'", ["pass", "fail", "_"], {"pass"}),
    # the subject is closed: other words can turn the sentence around
    ("The banned label is 'no_failure'.", E, REFUSED),
    ("I doubt it is 'no_failure'.", E, REFUSED),
    ("The bad outcome is 'piston_rings'.", E, REFUSED),
    ("Zero outputs are 'no_failure'.", E, REFUSED),
    ("Bob mistakenly thinks it is 'connecting_rod'.", E, REFUSED),
    ("The failure mode must not be 'no_failure'.", E, ALL - {NF}),
    ("The output's label must be 'piston_rings'.", E, {PR}),
    # every clause is about the first clause's subject
    (
        "The output must be 'piston_rings' or 'connecting_rod', and the input must be 'connecting_rod'.",
        E,
        REFUSED,
    ),
    ("The output must be anything but 'piston_rings'. The ground truth is 'no_failure'.", E, REFUSED),
    ("The output must be 'piston_rings' or 'connecting_rod', and it must not be 'connecting_rod'.", E, {PR}),
    # yes/no sets: a label spelled without its separators, answer words and numerals name an answer
    ("must be notok", OK, REFUSED),
    ("It is KO.", OK, REFUSED),
    ("must be notvalid", ["valid", "not_valid"], REFUSED),
    ("Nah.", YN, REFUSED),
    ("must be ½", ONE_ZERO, REFUSED),
    ("It is nil.", ONE_ZERO, REFUSED),
    ("It flunks.", PF, REFUSED),
]

TABLE = unique(
    ISSUE,
    REVIEW,
    POSITIVE,
    NEGATED,
    COMPOSED,
    CONTRASTIVE,
    CONTRACTED,
    SYMBOLIC,
    YES_NO_SETS,
    WORD_LABELS,
    quote_variants(),
)


def reading(description: str, labels: list[str]) -> object:
    try:
        return req(description).passing_labels(labels)
    except RequirementError as err:
        message = str(err)
        assert "accept=[...]" in message and "reject=[...]" in message, message
        assert f"must be '{labels[0]}'" in message and f"must not be '{labels[-1]}'" in message, message
        return REFUSED


def test_the_table_holds_at_least_300_phrasings():
    assert len(TABLE) >= 300


@pytest.mark.parametrize(("description", "labels", "expected"), TABLE)
def test_each_phrasing_has_its_one_reading(description, labels, expected):
    assert reading(description, labels) == expected


@pytest.mark.parametrize(("form", "example", "passes"), FORMS)
def test_the_grammar_table_examples_read_as_shown(form, example, passes):
    got = read_description(example, EXAMPLE_LABELS)
    if passes.startswith("all but "):
        assert got == set(EXAMPLE_LABELS) - set(passes.removeprefix("all but ").split(", "))
    else:
        assert got == set(passes.split(", "))


# Recognised forms and their readings, and extra clauses that are no form of their own.
BASE = [
    ("must be 'piston_rings'", {PR}),
    ("The failure mode must not be 'no_failure'", ALL - {NF}),
    ("must be 'piston_rings' or 'connecting_rod'", {PR, CR}),
    ("must be anything but 'no_failure'", ALL - {NF}),
    ("must be neither 'no_failure' nor 'mini_carburetor'", {PR, CR}),
    ("It can't be 'no_failure'", ALL - {NF}),
    ("one of 'piston_rings', 'connecting_rod'", {PR, CR}),
]
EXTRA_WORDS = [
    "but", "not", "no", "never", "nothing", "none", "except", "unless", "if", "only", "free", "less",
    "without", "instead", "rather", "than", "other", "else", "cant", "dont", "isn't", "false", "fail",
    "really", "it", "is", "must", "be", "and", "or", "nor", "neither", "either", "one", "of", "any",
    "anything", "all", "non", "un", "-", "!=", "==", "!", "=", ",", ";", ".", "(", ")", "?", ":",
    "'no_failure'", "'piston_rings'", "'connecting_rod'", "'gearbox'", "no_failure", "piston rings",
    "“no_failure”", "'", "\"", "not'", "the", "engine", "runs", "false.", "just kidding",
]  # fmt: skip


SEPARATORS = [",", ";", ".", " and", " but", " unless", " if", " (", ", but", " -", ""]


@settings(max_examples=400, deadline=None, database=None)
@given(
    base=st.sampled_from(BASE),
    extra=st.lists(st.sampled_from(EXTRA_WORDS), min_size=1, max_size=6),
    separator=st.sampled_from(SEPARATORS),
    before=st.booleans(),
)
def test_a_form_with_an_extra_clause_reads_as_itself_a_narrower_form_or_is_refused(
    base, extra, separator, before
):
    """An extra clause before or after a recognised form never yields a reading outside the form's own.

    The clause may itself be a recognised form ("..., not 'x'"): the clauses then intersect, which
    narrows the reading; nothing can widen it, turn it around, or leave a word unread. (Words that
    continue the form's own list, "or 'b'", make another form and are not an extra clause.)"""
    text, own = base
    if (
        not before
        and separator in {",", ""}
        and (extra[0] in {"or", "nor", ","} or re.search("_|rings", extra[0]))
    ):
        extra = ["so", *extra]  # continues the form's list ("one of 'a', 'b'" + ", 'c'"): another form
    if before and not separator:  # words run into the form make another form ("isn't one of ..")
        separator = "."
    clause = " ".join(extra)
    description = f"{clause}{separator} {text}" if before else f"{text}{separator} {clause}"
    got = reading(description, E)
    assert got == REFUSED or got <= own, (description, got)


@settings(max_examples=200, deadline=None, database=None)
@given(
    base=st.sampled_from(BASE), extra=st.text(min_size=1, max_size=20), separator=st.sampled_from(SEPARATORS)
)
def test_a_form_with_any_text_appended_never_widens_or_flips(base, extra, separator):
    text, own = base
    if separator in {",", ""} and extra.lstrip().lower().startswith(
        ("or", "nor", ",", "'", '"', "`", "‘", "“")
    ):
        extra = "so " + extra
    got = reading(f"{text}{separator} {extra}", E)
    assert got == REFUSED or got <= own, (text, separator, extra, got)


@pytest.mark.parametrize(("description", "labels", "expected"), TABLE)
def test_read_description_alone_gives_the_same_reading(description, labels, expected):
    try:
        got = read_description(description, labels)
    except RequirementError:
        got = REFUSED
    assert got == expected


def test_unquoted_words_in_a_yes_no_text_are_checked_word_by_word():
    # no word of the text may negate or answer; a quoted non-label is refused for every label set
    for text in ["The reply mentions 'Paris'", "The reply is polite; it is kind."]:
        assert reading(text, YN) == (REFUSED if "'" in text else {"yes"})
    with pytest.raises(RequirementError, match="names none"):
        req("The summary is good.").passing_labels(E)
