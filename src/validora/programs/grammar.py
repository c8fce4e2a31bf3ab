"""The requirement grammar: which of an adapter's labels a requirement's description lets pass.

Reading a requirement's description (DESIGN §8) is exact or refused: a check that silently answers the
opposite question is worse than none. The grammar, applied to one adapter's labels:

- Mention: a label in quotes ('x', "x", `x`, ‘x’, “x”). When the description quotes no label, a label
  written out as a whole phrase also counts, longest first (with labels `piston rings` and `rings`,
  "piston rings" names only the first). Case is ignored unless two labels differ only by case. Everyday
  words (yes, no, true, ...) never count unquoted, and neither does anything for a yes/no-like label set.
- Clauses: the text splits at , ; : . ! ? ( ) / and at and, or, nor, but, so, then and the condition
  words if, unless, when, while, because, since, although, ...
- Governing words: the run of words right before a mention drawn from GOVERNORS, HEDGES, negations
  (not, never, no, none, neither, cannot, any "n't" word, no longer) and exclusions (other than, except,
  excluding, rather than, instead of, and "but" right before a label). It must hold a verb such as
  "be"/"is"/"must"/"equal", a negation or an exclusion. One negation or one exclusion excludes the label;
  a negation plus an exclusion ("not anything other than 'x'") includes it; otherwise it is included.
- A mention with no governing words continues a list ("must not be 'a', 'b' or 'c'") and takes the
  previous mention's sense; a mention that opens the description with nothing after it is included.
- Passing labels: the included ones (none may also be excluded); if none is included, every label but
  the excluded ones. No mention: a yes/no-like label set passes its positive label (the requirement
  holds); any other set is refused.

Refused with a `RequirementError` that says how to write it (quote the label, or pass accept=/reject=):
a negation or exclusion outside a label's governing words (in a clause without labels it is allowed only
after a condition word: "Unless the engine is not running, ..."), a label inside a condition, words about
a label after it ("'x' is forbidden") or before it that are not governing words ("differ from 'x'"),
two negations or two exclusions, a negation with need/have/only/always ("need not be"), "'a' and 'b'"
both required, included and excluded labels joined by "or", a label both included and excluded, unquoted
labels beside quoted ones that change the reading, and any passing set that is empty or holds every label.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from validora.errors import RequirementError

YES_LIKE = {"yes", "true", "pass", "passed", "valid", "compliant", "ok", "good", "1", "y"}
NO_LIKE = {"no", "false", "fail", "failed", "invalid", "non_compliant", "noncompliant", "bad", "0", "n"}
ORDINARY = {"yes", "no", "not", "none", "y", "n", "ok", "true", "false", "0", "1"}  # labels only when quoted
QUOTES = {"'": "'", '"': '"', "`": "`", "‘": "’", "“": "”"}

NEGATIONS = {"not", "never", "no", "none", "neither", "cannot", "no_longer"}  # and every word ending in n't
EXCLUSIONS = {"other_than", "except", "excluding", "rather_than", "instead_of"}
HEADS = {"must", "should", "shall", "will", "would", "can", "could", "may", "might", "be", "is", "are"}
HEADS |= {"was", "were", "been", "being", "do", "does", "equal", "equals", "match", "matches", "labelled"}
HEADS |= {"labeled", "classified", "predicted", "marked"}
FILLERS = {"to", "the", "a", "an", "any", "anything", "something", "everything", "all", "one", "of", "as"}
FILLERS |= {"label", "labels", "class", "either", "exactly", "also", "ever"}
HEDGES = {"need", "needs", "have", "has", "had", "necessarily", "always", "only", "just"}
GOVERNORS = HEADS | FILLERS | HEDGES
NEGATIVE_WORDS = {"forbidden", "forbid", "prohibited", "prohibit", "disallowed", "disallow", "unacceptable"}
NEGATIVE_WORDS |= {"wrong", "reject", "rejected", "exclude", "excluded", "avoid", "without"}
NEGATIVE_WORDS |= {"false", "untrue", "incorrect", "fail", "fails", "stop", "stops", "cease", "ceases"}
NEGATIVE_WORDS |= {"rarely", "seldom", "hardly", "barely", "lack", "lacks"}
CONDITIONS = {"if", "unless", "when", "whenever", "where", "while", "whereas", "because", "since"}
CONDITIONS |= {"although", "though"}
JOINERS = {"and", "or", "nor", "but", "so", "then"}
PUNCTUATION = set(",;:.!?()[]/")
CONTINUERS = {",", "/", "and", "or", "nor"}
_PHRASES = [
    (r"\bother\s+than\b", " other_than "),
    (r"\brather\s+than\b", " rather_than "),
    (r"\binstead\s+of\b", " instead_of "),
    (r"\bno\s+longer\b", " no_longer "),
    (r"\bcan\s+not\b", " cannot "),
]
_WORD = re.compile(r"\w+(?:'\w+)*|[,;:.!?()\[\]/]")


@dataclass(frozen=True)
class Mention:
    label: str
    start: int
    end: int
    quoted: bool


def _yes_no(labels: Sequence[str]) -> bool:
    folded = {label.lower() for label in labels}
    return folded <= YES_LIKE | NO_LIKE and bool(folded & YES_LIKE)


def find_mentions(description: str, labels: Sequence[str], unquoted: bool | None = None) -> list[Mention]:
    """Where the description names labels: quoted, or as a whole phrase; longest first, no overlaps.

    Unquoted names count by default only for label sets that are not yes/no-like."""
    folded = Counter(label.casefold() for label in labels)
    unquoted_ok = not _yes_no(labels) if unquoted is None else unquoted
    found = []
    for label in labels:
        flags = 0 if folded[label.casefold()] > 1 else re.IGNORECASE
        body = re.escape(label)
        for opening, closing in QUOTES.items():
            pattern = rf"(?<!\w){re.escape(opening)}{body}{re.escape(closing)}(?!\w)"
            found += [
                Mention(label, m.start(), m.end(), True) for m in re.finditer(pattern, description, flags)
            ]
        if unquoted_ok and label.casefold() not in ORDINARY:
            pattern = rf"(?<![\w-]){body}(?![\w-])"
            found += [
                Mention(label, m.start(), m.end(), False) for m in re.finditer(pattern, description, flags)
            ]
    chosen: list[Mention] = []
    for m in sorted(found, key=lambda m: (m.start - m.end, not m.quoted, m.start)):
        if all(m.end <= c.start or c.end <= m.start for c in chosen):
            chosen.append(m)
    return sorted(chosen, key=lambda m: m.start)


def refuse_reading(description: str, labels: Sequence[str], why: str) -> NoReturn:
    """Raise the one RequirementError every refused reading gives: why, and how to write it instead."""
    raise RequirementError(
        f"Cannot read {description!r} unambiguously against the labels {list(labels)}: {why}. "
        f"Quote the label and say must/must not, e.g. \"must be '{labels[0]}'\" or "
        f"\"must not be '{labels[-1]}'\", or pass accept=[...] or reject=[...]."
    )


def read_description(description: str, labels: list[str]) -> set[str]:
    """The labels the description lets pass (grammar in the module docstring), or a RequirementError."""
    mentions = find_mentions(description, labels)
    quoted = [m for m in mentions if m.quoted]
    if quoted:
        passing = _parse(description, labels, quoted)
        if len(quoted) < len(mentions) and _parse(description, labels, mentions) != passing:
            extra = sorted({m.label for m in mentions if not m.quoted})
            refuse_reading(description, labels, f"it quotes some labels but also names {extra} unquoted")
        return passing
    if mentions:
        return _parse(description, labels, mentions)
    if _yes_no(labels):  # the positive label says the requirement holds, whatever its wording
        positive = {label for label in labels if label.lower() in YES_LIKE}
        if written := find_mentions(description, labels, unquoted=True):
            try:
                other = _parse(description, labels, written)
            except RequirementError:  # not a sentence about the labels
                return positive
            if other != positive:
                refuse_reading(description, labels, f"it also reads as letting {sorted(other)} pass")
        return positive
    refuse_reading(description, labels, "it names none of the labels and they are not yes/no-like")


def _tokens(description: str, mentions: list[Mention]) -> list[str | int]:
    """Lower-cased words and clause punctuation; each mention becomes its index in `mentions`."""
    tokens: list[str | int] = []
    pos = 0
    for i, m in enumerate([*mentions, None]):
        text = description[pos : m.start if m else len(description)].lower().replace("’", "'")
        for pattern, joined in _PHRASES:
            text = re.sub(pattern, joined, text)
        tokens += _WORD.findall(text)
        if m:
            tokens.append(i)
            pos = m.end
    # "but" right before a label excludes it ("anything but 'x'"); elsewhere it joins two clauses.
    following = [*tokens[1:], None]
    return [
        "except" if t == "but" and isinstance(nxt, int) else t
        for t, nxt in zip(tokens, following, strict=True)
    ]


def _negation(word: str | int) -> bool:
    return isinstance(word, str) and (word in NEGATIONS or word.endswith("n't"))


def _cue(words: Sequence[str | int]) -> str | None:
    """The first word that could turn a label's sense around."""
    return next((w for w in words if _negation(w) or w in EXCLUSIONS or w in NEGATIVE_WORDS), None)


def _clauses(tokens: list[str | int]) -> list[tuple[str | None, int, int]]:
    """(the word or mark that opened it, start, end) for every non-empty clause."""
    out, opener, start = [], None, 0
    for i, t in enumerate([*tokens, "."]):
        if t in PUNCTUATION or t in JOINERS or t in CONDITIONS:
            if i > start:
                out.append((opener, start, i))
            opener, start = t, i + 1
    return out


def _governing(tokens: list[str | int], start: int, end: int) -> int:
    """Where the governing words before tokens[end] begin (end itself when there are none)."""
    i = end
    while i > start and (
        tokens[i - 1] in GOVERNORS or tokens[i - 1] in EXCLUSIONS or _negation(tokens[i - 1])
    ):
        i -= 1
    words = tokens[i:end]
    return i if any(w in HEADS or w in EXCLUSIONS or _negation(w) for w in words) else end


def _parse(description: str, labels: list[str], mentions: list[Mention]) -> set[str]:
    """Passing labels from the mentions and the words that govern each (grammar in the module docstring)."""
    tokens = _tokens(description, mentions)

    def refuse(why: str) -> NoReturn:
        refuse_reading(description, labels, why)

    def show(words: Sequence[str | int]) -> str:
        return " ".join(repr(mentions[w].label) if isinstance(w, int) else w for w in words)

    included: dict[str, bool] = {}  # label -> included (True) or excluded (False)
    previous: int | None = None  # token position of the previous mention
    for opener, start, end in _clauses(tokens):
        spots = [i for i in range(start, end) if isinstance(tokens[i], int)]
        clause = tokens[start:end]
        if not spots:
            if opener not in CONDITIONS and (cue := _cue(clause)):
                refuse(f"{cue!r} in {show(clause)!r} governs no label")
            continue
        if opener in CONDITIONS:
            refuse(f"a label is inside the condition {opener + ' ' + show(clause)!r}")
        starts = [start] + [spot + 1 for spot in spots[:-1]]
        heads = [_governing(tokens, a, spot) for a, spot in zip(starts, spots, strict=True)]
        for k, spot in enumerate(spots):
            label = mentions[tokens[spot]].label
            before = tokens[starts[k] : heads[k]]
            phrase = tokens[heads[k] : spot]
            after = tokens[spot + 1 : heads[k + 1] if k + 1 < len(spots) else end]
            if cue := _cue(before):
                refuse(f"{cue!r} in {show(before)!r} is not next to {label!r}")
            if cue := _cue(after):
                refuse(f"{cue!r} follows {label!r} ({show(after)!r})")
            if after and (after[0] in HEADS | HEDGES or _negation(after[0])):
                refuse(f"{label!r} is followed by {show(after)!r}")
            between = tokens[previous + 1 : spot] if previous is not None else []
            if phrase:
                negations = sum(map(_negation, phrase))
                exclusions = sum(w in EXCLUSIONS for w in phrase)
                if negations > 1 or exclusions > 1:
                    refuse(f"{show(phrase)!r} negates {label!r} more than once")
                if negations and HEDGES & set(phrase):
                    refuse(f"{show(phrase)!r} does not say whether {label!r} passes")
                sense = negations == exclusions
            elif previous is not None and not before and all(t in CONTINUERS for t in between):
                sense = included[mentions[tokens[previous]].label]
                if sense and "and" in between:
                    refuse(
                        f"an output cannot be both {show([tokens[previous], tokens[spot]])!r}; write 'a' or 'b'"
                    )
            elif previous is None and not after and all(w in FILLERS for w in before):
                sense = True
            else:
                refuse(f"no word such as 'must be' or 'must not be' governs {label!r}")
            mixed = previous is not None and sense != included[mentions[tokens[previous]].label]
            if mixed and {"or", "nor"} & set(between):
                refuse(f"{show(between)!r} joins a passing and a failing label")
            if included.get(label, sense) != sense:
                refuse(f"{label!r} is both required and excluded")
            included[label] = sense
            previous = spot
    required = {label for label, sense in included.items() if sense}
    return required or set(labels) - set(included)
