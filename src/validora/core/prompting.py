"""The validator prompt: the one place that decides its bytes and token ids, for training and inference.

    <item text>
    Requirement: <requirement text, or empty>
    <invocation prompt><label><end-of-turn token>

The prefix (item + requirement line) is what the base model computes and what a shared cache holds;
the suffix (invocation + label + end-of-turn) is where an aLoRA adapter is active.

Item and requirement texts are untrusted: they are tokenised with special-token parsing off, so that
`<|im_end|>` written in an item is plain text, never a control token (a forged invocation or turn).
Only the invocation, the labels and the chat template's own scaffolding carry real special tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from validora.core.jsonio import parse_json
from validora.errors import ConfigError, DataError

# 2: item and requirement texts are tokenised as plain text (identical ids unless they spell a special
# token). Adapters written with 1 load and score as before; only newer versions are refused.
PROMPT_FORMAT_VERSION = 2
ROLE = "check_requirement"
GRANITE_INVOCATION = "<|start_of_role|>check_requirement<|end_of_role|>"
_SENTINEL = "\x00VALIDORA\x00"


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of untrusted text: a special token's spelling in it stays text, never a control token."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def derive_invocation_prompt(tokenizer: Any) -> str:
    """The header of a `check_requirement` turn in the model's own chat template.

    Rendered as the text between a one-message conversation and the same conversation plus a
    `check_requirement` message, up to that message's content. A template that renders only the
    roles it knows (Qwen2.5's drops any other) gives a user turn's header with the role's name
    replaced, as its own rendering of the role would read: only where the name is plain text, never
    inside a special token (`<|user|>` has no `<|check_requirement|>` twin). Granite's string when the
    model has no template or neither way gives a header naming the role.
    """
    if not getattr(tokenizer, "chat_template", None):
        return GRANITE_INVOCATION
    header = _turn_header(tokenizer, ROLE)
    if header is None:
        user = _turn_header(tokenizer, "user")
        header = _renamed(tokenizer, user) if user is not None else None
    return header if header is not None and ROLE in header else GRANITE_INVOCATION


def _renamed(tokenizer: Any, header: str) -> str | None:
    """A user turn's header with its one plain-text "user" made `check_requirement`; None otherwise."""
    added = getattr(tokenizer, "added_tokens_decoder", {}).values()
    atomic = {str(getattr(t, "content", t)) for t in added} | set(
        getattr(tokenizer, "all_special_tokens", [])
    )
    pattern = "|".join(map(re.escape, sorted(filter(None, atomic), key=len, reverse=True)))
    pieces = re.split(f"({pattern})", header) if pattern else [header]  # odd pieces: the tokens
    if sum(p.count("user") for p in pieces[0::2]) != 1 or any("user" in t for t in pieces[1::2]):
        return None
    return "".join(p.replace("user", ROLE) if i % 2 == 0 else p for i, p in enumerate(pieces))


def _turn_header(tokenizer: Any, role: str) -> str | None:
    """The text a template puts before the content of a `role` message that follows a user message."""
    base = [{"role": "user", "content": "x"}]
    try:
        before = tokenizer.apply_chat_template(base, tokenize=False)
        after = tokenizer.apply_chat_template([*base, {"role": role, "content": _SENTINEL}], tokenize=False)
    except Exception:
        return None
    if not isinstance(before, str) or not isinstance(after, str) or not after.startswith(before):
        return None
    if _SENTINEL not in after:
        return None
    header = after[len(before) : after.index(_SENTINEL)]
    return header if role in header else None


def load_promptfile(path: str | Path) -> str:
    """Read `{"invocation_prompt": "..."}`; a broken file is a clear error, never a silent default."""
    path = Path(path)
    try:
        data = parse_json(path.read_bytes())  # deep nesting and lone surrogates are refused too
    except FileNotFoundError:
        raise ConfigError(f"promptfile {path} does not exist.", option="promptfile") from None
    except IsADirectoryError:
        raise ConfigError(
            f"promptfile {path} is a directory, not a JSON file.", option="promptfile"
        ) from None
    except PermissionError:
        raise ConfigError(
            f"promptfile {path} cannot be read (permission denied).", option="promptfile"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"promptfile {path} is not valid JSON: {exc}.", option="promptfile") from None
    prompt = data.get("invocation_prompt") if isinstance(data, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(
            f'promptfile {path} must be a JSON object with a non-empty "invocation_prompt" string.',
            option="promptfile",
        )
    return prompt


@dataclass(frozen=True)
class Encoded:
    """One item's prompt as token ids; `truncated` counts item tokens cut from the left. A training
    example carries its gold `label`: its full sequence is `prefix + invocation_ids + label_ids[label]`."""

    prefix: list[int]
    truncated: int = 0
    label: str | None = None


@runtime_checkable
class Format(Protocol):
    """What a check needs from a prompt format (`PromptFormat`, `JudgeFormat`): its prompt's token ids.

    A check's prompt is `encode(...).prefix + invocation_ids + label_ids[label]` for each label.
    """

    @property
    def labels(self) -> Sequence[str]: ...

    @property
    def label_ids(self) -> dict[str, list[int]]: ...  # each label's tokens, its last only a target

    @property
    def invocation_ids(self) -> list[int]: ...  # where an aLoRA adapter becomes active

    @property
    def pad_id(self) -> int: ...

    def room(self, requirement: str | None = None) -> int:
        """How many of the output's tokens fit beside this requirement."""
        ...

    def encode(self, item: str, requirement: str | None = None, *, room: int | None = None) -> Encoded:
        """The prompt's prefix ids, the output cut from the left to at most `room` tokens."""
        ...


DEFAULT_MAX_LENGTH = 1024  # tokens of item + requirement + invocation + label; items are cut from the left


class PromptFormat:
    """Token-level prompt format for one tokenizer, label set and invocation prompt."""

    def __init__(
        self,
        tokenizer: Any,
        labels: Sequence[str],
        invocation_prompt: str | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
    ):
        if len(set(labels)) != len(labels) or not labels:
            raise ConfigError(f"labels must be a non-empty list of distinct strings, got {list(labels)!r}")
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.invocation_prompt = invocation_prompt or derive_invocation_prompt(tokenizer)
        self.max_length = max_length
        self.invocation_ids = self._ids(self.invocation_prompt)
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ConfigError(
                "The tokenizer has no end-of-turn (EOS) token; a label's end cannot be learned."
            )
        self.eos_id = int(eos)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_id
        # Labels are followed by the end-of-turn token so the adapter learns where a label ends.
        self.label_ids = {label: [*self._ids(label), self.eos_id] for label in self.labels}
        # BOS or whatever the tokenizer puts in front of every text.
        self.lead_ids = list(tokenizer("", add_special_tokens=True)["input_ids"])
        # Truncation budget uses the longest label, so an item's prefix is the same whichever label follows.
        self.suffix_budget = len(self.invocation_ids) + max(len(v) for v in self.label_ids.values())
        self._last_item: tuple[str, list[int]] | None = None

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _item_ids(self, item: str) -> list[int]:
        """Token ids of an item; the last one is remembered, as many checks of one output follow each other."""
        last = self._last_item
        if last is not None and last[0] == item:
            return last[1]
        ids = text_ids(self.tokenizer, item)
        self._last_item = (item, ids)
        return ids

    @staticmethod
    def requirement_line(requirement: str | None) -> str:
        return f"\nRequirement: {requirement or ''}\n"

    def room(self, requirement: str | None = None) -> int:
        """How many item tokens fit beside this requirement line, the invocation and the longest label."""
        return self._room(text_ids(self.tokenizer, self.requirement_line(requirement)))

    def _room(self, req_ids: list[int]) -> int:
        room = self.max_length - len(self.lead_ids) - len(req_ids) - self.suffix_budget
        if room < 1:
            raise DataError(
                f"max_length {self.max_length} leaves no room for the item: the requirement line, "
                f"invocation and longest label take {self.max_length - room} tokens.",
                option="max_length",
            )
        return room

    def encode(self, item: str, requirement: str | None = None, *, room: int | None = None) -> Encoded:
        """The prefix ids of one item: lead tokens, item (left-truncated to fit), requirement line.

        `room` (at most `self.room(requirement)`) lets several checks of one output cut its text at the
        same place, so that they can share its cache.
        """
        item_ids = self._item_ids(item)
        req_ids = text_ids(self.tokenizer, self.requirement_line(requirement))
        own = self._room(req_ids)  # the requirement line is tokenised once
        room = own if room is None else min(room, own)
        cut = max(0, len(item_ids) - room)
        return Encoded(prefix=[*self.lead_ids, *item_ids[cut:], *req_ids], truncated=cut)

    def describe(self) -> dict[str, Any]:
        """What an adapter stores so that inference rebuilds exactly this format."""
        return {
            "prompt_format_version": PROMPT_FORMAT_VERSION,
            "invocation_prompt": self.invocation_prompt,
            "invocation_ids": self.invocation_ids,
            "eos_id": self.eos_id,
            "labels": self.labels,
            "label_ids": self.label_ids,
            "max_length": self.max_length,
        }

    def check_matches(self, stored: dict[str, Any]) -> None:
        """Refuse to score with a tokenizer that would produce other ids than training did."""
        if stored.get("invocation_ids") != self.invocation_ids or stored.get("label_ids") != self.label_ids:
            raise ConfigError(
                "This tokenizer encodes the adapter's invocation prompt or labels differently from the "
                "tokenizer it was trained with; use the adapter's own base model."
            )


def truncated_count(fmt: Format, items: Sequence[str], requirements: Sequence[str | None]) -> int:
    """How many of `items` lose their beginning to the format's max_length (each beside its requirement,
    as the adapter will see it): what a caller warns about, since scoring cuts them without a word."""
    return sum(fmt.encode(item, req).truncated > 0 for item, req in zip(items, requirements, strict=True))


def truncation_note(count: int, total: int, max_length: int, setting: str = "max_length") -> str:
    """The warning for `count` of `total` texts cut to `max_length` tokens (`setting` names the limit)."""
    return (
        f"{count} of {total} text(s) were longer than {setting} {max_length} tokens (the limit the adapter "
        "was trained with) and lost their beginning: only their last part was scored. Shorten them, or "
        f"train with a larger {setting}."
    )


JUDGE_QUESTION = (
    "Text:\n{item}\n\nRequirement: {requirement}\n\nDoes the text satisfy the requirement? Answer yes or no."
)
# The judge's question is cut to this many tokens (the output loses its beginning, as in PromptFormat):
# the packed mask grows with the square of the prompt, about 4.5 GB for a 30k-token output.
JUDGE_MAX_LENGTH = 1024


class JudgeFormat:
    """The base model as a yes/no judge: the same interface as PromptFormat, labels "yes" and "no".

    The text comes first in the question so that several requirements on one output share its prefix.
    The chat template is rendered around a placeholder: its pieces keep their special tokens, while
    the output and the requirement are tokenised as plain text (no forged turns).
    """

    labels = ("yes", "no")

    def __init__(self, tokenizer: Any, max_length: int = JUDGE_MAX_LENGTH):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._last_item: tuple[str, list[int]] | None = None
        scaffold = self._scaffold() if getattr(tokenizer, "chat_template", None) else None
        self.chat = scaffold is not None
        head, tail, self.invocation_prompt = scaffold or ("", "", "\nAnswer:")
        # Without a template, whatever the tokenizer puts in front of every text (BOS) leads.
        self.head_ids = self._ids(head) if self.chat else list(tokenizer("")["input_ids"])
        self.tail_ids = self._ids(tail)
        before_item, self._after_item = JUDGE_QUESTION.split("{item}")
        self.text_head_ids = self._ids(before_item)
        self.invocation_ids = self._ids(self.invocation_prompt)
        space = "" if self.chat else " "
        self.label_ids = {
            label: self._ids(space + word) for label, word in zip(self.labels, ("Yes", "No"), strict=True)
        }
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else int(tokenizer.eos_token_id or 0)
        self._fixed = (
            len(self.head_ids) + len(self.text_head_ids) + len(self.tail_ids) + len(self.invocation_ids)
            + max(len(v) for v in self.label_ids.values())
        )  # fmt: skip

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _scaffold(self) -> tuple[str, str, str] | None:
        """The chat template's text before and after a user message, and its generation header.

        None when the template fails or rewrites the message: the plain question is asked instead.
        """
        probe = [{"role": "user", "content": _SENTINEL}]
        try:
            plain = self.tokenizer.apply_chat_template(probe, tokenize=False)
            asking = self.tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        except Exception:
            return None
        if not isinstance(plain, str) or plain.count(_SENTINEL) != 1:
            return None
        head, tail = plain.split(_SENTINEL)
        header = asking[len(plain) :] if asking.startswith(plain) else "\nAnswer:"
        return head, tail, header

    def _rest_ids(self, requirement: str | None) -> list[int]:
        return text_ids(self.tokenizer, self._after_item.format(requirement=requirement or ""))

    def room(self, requirement: str | None = None) -> int:
        """How many of the output's tokens fit in the question beside this requirement."""
        return self._room(self._rest_ids(requirement))

    def _room(self, rest_ids: list[int]) -> int:
        room = self.max_length - self._fixed - len(rest_ids)
        if room < 1:
            raise DataError(
                f"The yes/no judge's question is limited to {self.max_length} tokens and the requirement "
                f"alone takes {len(rest_ids)}; shorten the requirement."
            )
        return room

    def encode(self, item: str, requirement: str | None = None, *, room: int | None = None) -> Encoded:
        """The question's ids; a long output loses its beginning so that the question fits."""
        last = self._last_item
        if last is not None and last[0] == item:
            item_ids = last[1]
        else:
            item_ids = text_ids(self.tokenizer, item)
            self._last_item = (item, item_ids)
        rest_ids = self._rest_ids(requirement)
        own = self._room(rest_ids)
        room = own if room is None else min(room, own)
        cut = max(0, len(item_ids) - room)
        prefix = [*self.head_ids, *self.text_head_ids, *item_ids[cut:], *rest_ids, *self.tail_ids]
        return Encoded(prefix=prefix, truncated=cut)
