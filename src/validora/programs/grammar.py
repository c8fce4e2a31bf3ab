"""The requirement grammar: which of an adapter's labels a requirement's description lets pass.

Reading a requirement's description (DESIGN §8) is exact or refused: a check that silently answers the
opposite question is worse than none. The grammar is closed: it recognises the forms below and refuses
everything else with a `RequirementError`. Nothing is read by spotting negative words, so a phrasing
nobody listed is refused, never read as positive.

Tokens. A quoted span ('x', "x", `x`, ‘x’, “x”) is one token: a label when its text is a label, else a
quoted non-label. Unquoted, a run of words is a label when it is the label's words in order (`-`, `_` and
spaces between its letters or digits are alike, so "non-compliant" names `non_compliant`; at its ends
they are its own: `-1` is not `1`; the longest label wins, so "piston rings" names `piston rings`, not
`rings`); a one-word label that is also a word of this
grammar (or, not, one, ...) counts only quoted. Case is ignored unless two labels differ only by case or
separators; then only the exact quoted label counts. Other tokens: words (with their apostrophe: can't),
the marks , ; . ! ( ) and any other symbol (never part of a form: != == / - ...).

Grammar (L: a label token; LIST: L, then more joined by "," / "or" / ", or", with "or" before the
last label unless after one of / any of / none of; never "and"):

    description := sentence ("." | "!") sentence ... ["." | "!"]    the passing sets intersect
    sentence    := clause (JOIN clause | [JOIN] ELIDED)*            the passing sets intersect
    JOIN        := "," | ";" | "and" | ", and" | "("...")" around an ELIDED clause
    ELIDED      := ("not" | "never" | "but not" | "rather than" | "instead of") LIST -> all but LIST
                 | "and nothing else", right after a positive LIST                -> unchanged
    clause      := [subject] HEAD BODY | BODY without LIST (or LIST alone, first in the description)
    subject     := up to 6 words of SUBJECT_WORDS ("The failure mode", "It"); a later clause's
                   subject is none, "it" or the first clause's
    HEAD        := must/should/shall/will/has to/have to/needs to/need to + be, is, are   (positive)
                 | must not/mustn't/must never/must no longer/cannot/can not/can't/won't/shouldn't/
                   shan't/should not/shall not/will not + be, is not, isn't, is never, are not,
                   aren't                                                               (negative)
                 then optionally: classified as, labelled (as), labeled (as), predicted as, marked as
    BODY        := LIST                                  positive: LIST;        negative: all but LIST
                 | one of LIST | any of LIST             positive: LIST;        negative: all but LIST
                 | either L or L ...                     positive: LIST;        negative: all but LIST
                 | ANY (other than | but | except [for]) LIST   positive: all but LIST; negative: LIST
                 | neither L [, L] nor L | none of LIST  positive: all but LIST; negative: refused
    ANY         := anything | any label | any class | any value

A plain word is any word that is not a word of this grammar, not a word that can negate, contrast,
restrict or condition (not, no, nothing, but, only, free, less, without, unless, if, cant, ...), not
negated by its form (non..., un..., in-/im-/il-/ir-/dis- adjectives, ...less, ...free) and not a label.

No label named: a yes/no-like label set (yes/no, true/false, 1/0, pass/fail, compliant/non_compliant,
safe/unsafe, valid/invalid, ok/not_ok, ...) passes its positive label ("the statement holds") only when
the text holds no quoted span, symbol, word that can negate or restrict, nor a word that names or
paraphrases a yes/no answer (true, wrong, failure, ..., and any number when a label is one); any other
label set is refused. `FORMS` holds
the README's grammar table: each form, an example and the labels it lets pass.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from validora.errors import RequirementError
from validora.programs.grammar_words import (
    ANSWER_WORDS,
    CONTRACTED,
    CONTRACTED_BARE,
    COPULAS,
    GRAMMAR_WORDS,
    IN_ADJECTIVE,
    MODALS,
    NEGATED_MODALS,
    NO_LIKE,
    NUMBER_WORDS,
    ORDINARY,
    PLAIN_EXCEPTIONS,
    QUOTES,
    RESTRICTING,
    SUBJECT_WORDS,
    YES_LIKE,
)

MARKS = set(",;.!?:()")
PARTICIPLES = [("classified", "as"), ("labelled", "as"), ("labeled", "as"), ("predicted", "as")]
PARTICIPLES += [("marked", "as"), ("labelled",), ("labeled",)]
_TOKEN = re.compile(
    r"(?P<q>(?<!\w)(?P<open>['\"`‘“])(?P<body>[^'\"`‘’“”\n]*)(?P<close>['\"`’”])(?!\w))"
    r"|(?P<w>[^\W_]+(?:['’][^\W_]+)?)|(?P<m>[,;.!?:()])|(?P<sep>\s+|_+|(?<=\w)-(?=\w))|(?P<s>.)"
)

# The README's grammar table: (form, example, what passes with the engine labels below).
EXAMPLE_LABELS = ["piston_rings", "connecting_rod", "mini_carburetor", "no_failure"]
FORMS = [
    ("must be 'A'", "The failure mode must be 'piston_rings'.", "piston_rings"),
    ("must be 'A' or 'B'", "must be 'piston_rings' or 'connecting_rod'", "connecting_rod, piston_rings"),
    ("one of 'A', 'B'", "must be one of 'piston_rings', 'connecting_rod'", "connecting_rod, piston_rings"),
    ("either 'A' or 'B'", "Either 'piston_rings' or 'connecting_rod'", "connecting_rod, piston_rings"),
    ("must not be 'A'", "The failure mode must not be 'no_failure'.", "all but no_failure"),
    ("can't / cannot / isn't / must never be 'A'", "It can't be 'no_failure'", "all but no_failure"),
    ("anything but / except / other than 'A'", "must be anything except 'no_failure'", "all but no_failure"),
    ("must be neither 'A' nor 'B'", "must be neither 'no_failure' nor 'piston_rings'", "all but no_failure, piston_rings"),
    ("none of 'A', 'B'", "must be none of 'no_failure', 'piston_rings'", "all but no_failure, piston_rings"),
    ("must not be anything other than 'A'", "should not be anything other than 'no_failure'", "no_failure"),
    ("'A', not 'B' / 'A' rather than 'B'", "must be 'piston_rings', not 'no_failure'", "piston_rings"),
    ("must be 'A' and must not be 'B'", "must be 'piston_rings' and must not be 'no_failure'", "piston_rings"),
    ("a label written out (- _ space alike)", "must not be no failure", "all but no_failure"),
]  # fmt: skip
ACCEPTED = ("\"must be 'A'\"", "\"must not be 'A'\"", "\"must be 'A' or 'B'\"")


@dataclass(frozen=True)
class Mention:
    label: str
    start: int
    end: int
    quoted: bool


@dataclass(frozen=True)
class Token:
    kind: str  # "L" label, "Q" quoted non-label, "W" word, "M" mark, "S" symbol
    text: str  # the label, the quoted text, the lower-cased word or the mark
    start: int
    end: int


def _norm(text: str) -> str:
    """A label or quoted text as compared: case folded, and `-`, `_` and spaces between its letters or
    digits alike. Separators at its ends are kept: `-1` is not `1`, `B-` is not `B`."""
    return re.sub(r"(?<=[^\W_])[\s_\-]+(?=[^\W_])", " ", text.casefold())


def _squashed(text: str) -> str:
    """A label's letters and digits only: "notok" and "nok"-like spellings of `not_ok` are this."""
    return re.sub(r"[\W_]+", "", text.casefold())


def yes_no(labels: Sequence[str]) -> bool:
    folded = {_norm(label).replace(" ", "_") for label in labels}
    return folded <= YES_LIKE | NO_LIKE and bool(folded & YES_LIKE) and bool(folded & NO_LIKE)


def _tokens(description: str, labels: Sequence[str], unquoted: bool = True) -> list[Token]:
    """The description as tokens; quoted labels, then unquoted runs of a label's words, become labels."""
    clashing = {n for n, count in Counter(_norm(label) for label in labels).items() if count > 1}
    raw: list[Token] = []
    for m in _TOKEN.finditer(description):
        if m.group("q"):
            body, label = m.group("body"), None
            if QUOTES[m.group("open")] != m.group("close"):
                refuse_reading(description, labels, f"its quotes around {body!r} do not match")
            for candidate in labels:
                if (body == candidate) if _norm(candidate) in clashing else _norm(body) == _norm(candidate):
                    label = candidate
            raw.append(Token("L" if label else "Q", label or body, m.start(), m.end()))
        elif m.group("w"):
            raw.append(Token("W", m.group("w").lower().replace("’", "'"), m.start(), m.end()))
        elif m.group("m") or m.group("s"):
            raw.append(Token("M" if m.group("m") else "S", m.group(0), m.start(), m.end()))
    if unquoted is False:
        return raw
    spelled = sorted(
        (
            (_norm(label).split(), label)
            for label in labels
            if _norm(label) not in clashing and _norm(label).split()
        ),
        key=lambda pair: -len(pair[0]),
    )
    out: list[Token] = []
    i = 0
    while i < len(raw):
        for words, label in spelled:
            run = raw[i : i + len(words)]
            if len(words) == 1 and (words[0] in GRAMMAR_WORDS or (unquoted is None and words[0] in ORDINARY)):
                continue
            if len(run) == len(words) and all(
                t.kind == "W" and t.text == w for t, w in zip(run, words, strict=True)
            ):
                out.append(Token("L", label, run[0].start, run[-1].end))
                i += len(words)
                break
        else:
            out.append(raw[i])
            i += 1
    return out


def find_mentions(description: str, labels: Sequence[str], unquoted: bool | None = None) -> list[Mention]:
    """Where the description names labels: quoted, or written out as the label's words, longest first.

    Unquoted names count by default (for routing) only for label sets that are not yes/no-like and
    never for everyday words (yes, no, true, 0, ...)."""
    written = (None if not yes_no(labels) else False) if unquoted is None else unquoted
    spans = {(t.start, t.end) for t in _tokens(description, labels, unquoted=False) if t.kind == "L"}
    return [
        Mention(t.text, t.start, t.end, (t.start, t.end) in spans)
        for t in _tokens(description, labels, unquoted=written)
        if t.kind == "L"
    ]


def refuse_reading(description: str, labels: Sequence[str], why: str) -> NoReturn:
    """Raise the one RequirementError every refused reading gives: why, and the forms that are read."""
    a, b = (labels[0], labels[-1]) if labels else ("A", "B")
    raise RequirementError(
        f"Cannot read {description!r} unambiguously against the labels {list(labels)}: {why}. "
        f"Quote the label and use one of the forms this grammar reads, e.g. \"must be '{a}'\", "
        f"\"must not be '{b}'\" or \"must be '{a}' or '{b}'\" (README, Requirement grammar), "
        "or pass accept=[...] or reject=[...]."
    )


def negating(word: str) -> bool:
    """A word that can negate, contrast, restrict or condition, by itself or by its form."""
    if word in PLAIN_EXCEPTIONS:
        return False
    shaped = CONTRACTED.fullmatch(word) or IN_ADJECTIVE.fullmatch(word)
    return word in RESTRICTING or word in CONTRACTED_BARE or bool(shaped)


def plain(word: str) -> bool:
    """A word that may stand in a subject: one of SUBJECT_WORDS, none that can negate or restrict."""
    return word in SUBJECT_WORDS and not negating(word)


def read_description(description: str, labels: Sequence[str]) -> set[str]:
    """The labels the description lets pass (grammar in the module docstring), or a RequirementError."""
    labels = list(labels)
    tokens = _tokens(description, labels)
    if any(t.kind == "L" for t in tokens):
        passing = _Parser(description, labels, tokens).description()
        if not passing or passing == set(labels):
            which, outcome = ("no label", "fail") if not passing else ("every label", "pass")
            refuse_reading(description, labels, f"it lets {which} pass, so the check would always {outcome}")
        return passing
    quoted = [t.text for t in tokens if t.kind == "Q"]
    if quoted:
        refuse_reading(description, labels, f"it names none of the labels ({quoted[0]!r} is no label)")
    if not yes_no(labels):
        refuse_reading(description, labels, "it names none of the labels and they are not yes/no-like")
    digits = any(c.isnumeric() for label in labels for c in label)  # "must be 00" paraphrases "0"
    squashed = {_squashed(label) for label in labels}  # "notok" spells not_ok
    for t in tokens:
        numeric = t.kind == "W" and (any(c.isnumeric() for c in t.text) or t.text in NUMBER_WORDS) and digits
        named = t.kind == "W" and (t.text in ANSWER_WORDS or t.text in squashed or negating(t.text))
        if t.kind == "S" or numeric or named:
            refuse_reading(
                description,
                labels,
                f"{t.text!r} can negate, restrict or name an answer, so the text does not say that "
                "its statement holding is the passing label",
            )
    return {label for label in labels if _norm(label).replace(" ", "_") in YES_LIKE}


class _Parser:
    """Recursive descent over the tokens (grammar in the module docstring); any other text is refused."""

    def __init__(self, description: str, labels: list[str], tokens: list[Token]) -> None:
        self.text, self.labels, self.tokens, self.pos = description, labels, tokens, 0
        self.all = set(labels)
        self.subject: list[str] = []  # the first clause's subject: later clauses may not change it

    def fail(self, why: str) -> NoReturn:
        if self.pos < len(self.tokens):
            near = self.text[self.tokens[self.pos].start :]
            why = f"{why}; the grammar stops reading at {near[:40]!r}"
        refuse_reading(self.text, self.labels, why)

    def word(self, at: int = 0) -> str | None:
        i = self.pos + at
        return self.tokens[i].text if i < len(self.tokens) and self.tokens[i].kind in "WM" else None

    def take(self, *words: str) -> bool:
        if all(self.word(k) == w for k, w in enumerate(words)):
            self.pos += len(words)
            return True
        return False

    def is_label(self, at: int = 0) -> bool:
        i = self.pos + at
        return i < len(self.tokens) and self.tokens[i].kind == "L"

    def label(self) -> str:
        if not self.is_label():
            self.fail("a quoted label is expected here")
        self.pos += 1
        return self.tokens[self.pos - 1].text

    def label_list(self, commas: bool = False) -> set[str]:
        """LIST: labels joined by "," / "or" / ", or"; only after one of / any of / none of may the
        last label follow a bare comma ("must be 'a', 'b'" may be a list cut short)."""
        found, last = {self.label()}, None
        while True:
            if self.word() in {",", "or"} and self.is_label(1):
                last = self.word()
                self.pos += 1
            elif self.word() == "," and self.word(1) == "or" and self.is_label(2):
                last = "or"
                self.pos += 2
            elif (self.word() == "and" and self.is_label(1)) or (
                self.word() == "," and self.word(1) == "and" and self.is_label(2)
            ):
                self.fail("an output has one label, so 'and' between labels cannot hold; write 'or'")
            else:
                if last == "," and not commas:
                    self.fail("a list of labels needs 'or' before its last label")
                return found
            found.add(self.label())

    def description(self) -> set[str]:
        passing = self.sentence(first=True)
        while self.pos < len(self.tokens):
            if not (self.take(".") or self.take("!")):
                self.fail("this is not one of the forms the grammar reads")
            if self.pos < len(self.tokens):
                passing &= self.sentence(first=False)
        return passing

    def sentence(self, first: bool) -> set[str]:
        passing, positive_list = self.clause(first)
        while True:
            start = self.pos
            paren = self.take("(")
            joined = paren or self.take(",") or self.take(";")
            joined = self.take("and") or joined
            if not paren and (self.take("nothing", "else") if joined else False):
                if not positive_list:
                    self.fail("'nothing else' can only follow a positive list of labels")
                continue
            if (
                self.take("not")
                or self.take("never")
                or self.take("but", "not")
                or self.take("rather", "than")
                or self.take("instead", "of")
            ):
                passing &= self.all - self.label_list()
                if paren and not self.take(")"):
                    self.fail("a ')' is expected here")
            elif joined and not paren:
                if self.is_label():
                    self.fail("an output has one label, so 'and' between labels cannot hold; write 'or'")
                reading, positive_list = self.clause(False)
                passing &= reading
            else:
                self.pos = start
                return passing
            positive_list = False

    def clause(self, first: bool) -> tuple[set[str], bool]:
        body = self.body(positive=True, bare_list=first)
        if body is not None:
            return body, False
        start = self.pos
        for _ in range(6):  # a subject: plain words only
            token = self.tokens[self.pos] if self.pos < len(self.tokens) else None
            if self.head_starts() or not (token and token.kind == "W" and plain(token.text)):
                break
            self.pos += 1
        subject = [t.text for t in self.tokens[start : self.pos]]
        if first:
            self.subject = subject
        elif subject not in ([], ["it"], self.subject):  # "the output must be 'a', and the input 'b'"
            self.fail(
                f"{' '.join(subject)!r} is another subject than the first clause's: a check judges one "
                "output's label, so every clause must be about it"
            )
        if not self.head_starts():
            word = self.word()
            if word and word not in MARKS and word not in GRAMMAR_WORDS:
                self.fail(f"{word!r} is no word of a form the grammar reads (it could negate or restrict)")
            self.fail("a form such as 'must be' or 'must not be' and a quoted label is expected")
        negative = self.head()
        before = self.pos
        body = self.body(positive=not negative, bare_list=True)
        if body is None:
            self.fail("a quoted label, 'one of', 'either' or 'anything other than' is expected here")
        return body, not negative and self.tokens[before].kind == "L"

    def head_starts(self) -> bool:
        w = self.word()
        return w in MODALS | NEGATED_MODALS | set(COPULAS) | {"can", "has", "have", "needs", "need"}

    def head(self) -> bool:
        """Consume a head; True when it negates."""
        w = self.word()
        self.pos += 1
        if w in COPULAS:
            negative = COPULAS[w] or self.take("not") or self.take("never")
        else:
            if w in MODALS:
                negative = self.take("not") or self.take("never") or self.take("no", "longer")
            elif w in NEGATED_MODALS or (w == "can" and self.take("not")):
                negative = True
            elif w in {"has", "have", "needs", "need"} and self.take("to"):
                negative = False
            else:
                self.pos -= 1
                self.fail(f"{w!r} does not begin a form the grammar reads")
            if not self.take("be"):
                self.fail("'be' is expected here")
        for phrase in PARTICIPLES:
            if self.take(*phrase):
                break
        return negative

    def body(self, positive: bool, bare_list: bool) -> set[str] | None:
        if self.take("one", "of") or self.take("any", "of") or self.take("either"):
            either = self.word(-1) == "either"
            named = self.label_list(commas=not either)
            if either and len(named) < 2:
                self.fail("'either' needs two labels joined by 'or'")
            return named if positive else self.all - named
        if self.word() in {"neither", "none"}:
            if not positive:
                self.fail("a negated 'neither' or 'none of' is a double negation")
            if self.take("none", "of"):
                return self.all - self.label_list(commas=True)
            self.take("neither")
            named = {self.label()}
            while self.take(",") and self.is_label():
                named.add(self.label())
            if not self.take("nor"):
                self.fail("'neither' needs 'nor'")
            return self.all - named - {self.label()}
        if (
            self.take("anything")
            or self.take("any", "label")
            or self.take("any", "class")
            or self.take("any", "value")
        ):
            if not (
                self.take("other", "than")
                or self.take("but")
                or self.take("except", "for")
                or self.take("except")
            ):
                self.fail("'anything' is read only before 'other than', 'but' or 'except'")
            named = self.label_list()
            return self.all - named if positive else named
        if bare_list and self.is_label():
            named = self.label_list()
            return named if positive else self.all - named
        return None


def grammar_table() -> str:
    """The README's grammar table (Markdown), made from `FORMS`; tests/test_docs.py checks they agree."""
    rows = ["| form | example (engine labels) | passes |", "| --- | --- | --- |"]
    rows += [f"| `{form}` | `{example}` | {passes} |" for form, example, passes in FORMS]
    return "\n".join(rows)
