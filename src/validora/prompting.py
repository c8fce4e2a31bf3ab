"""The validator prompt: the one place that decides its bytes and token ids, for training and inference.

    <item text>
    Requirement: <requirement text, or empty>
    <invocation prompt><label><end-of-turn token>

The prefix (item + requirement line) is what the base model computes and what a shared cache holds;
the suffix (invocation + label + end-of-turn) is where an aLoRA adapter is active.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from validora.errors import ConfigError, DataError

PROMPT_FORMAT_VERSION = 1
ROLE = "check_requirement"
GRANITE_INVOCATION = "<|start_of_role|>check_requirement<|end_of_role|>"
_SENTINEL = "\x00VALIDORA\x00"


def derive_invocation_prompt(tokenizer: Any) -> str:
    """The header of a `check_requirement` turn in the model's own chat template.

    Rendered as the text between a one-message conversation and the same conversation plus a
    `check_requirement` message, up to that message's content; Granite's string when the model has
    no template or its template refuses the role.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return GRANITE_INVOCATION
    base = [{"role": "user", "content": "x"}]
    try:
        before = tokenizer.apply_chat_template(base, tokenize=False)
        after = tokenizer.apply_chat_template([*base, {"role": ROLE, "content": _SENTINEL}], tokenize=False)
    except Exception:
        return GRANITE_INVOCATION
    if not isinstance(before, str) or not after.startswith(before) or _SENTINEL not in after:
        return GRANITE_INVOCATION
    header = after[len(before) : after.index(_SENTINEL)]
    return header if ROLE in header else GRANITE_INVOCATION


def load_promptfile(path: str | Path) -> str:
    """Read `{"invocation_prompt": "..."}`; a broken file is a clear error, never a silent default."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--promptfile {path} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--promptfile {path} is not valid JSON: {exc}") from None
    prompt = data.get("invocation_prompt") if isinstance(data, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(
            f'--promptfile {path} must be a JSON object with a non-empty "invocation_prompt" string.'
        )
    return prompt


@dataclass(frozen=True)
class Encoded:
    """One item's prompt as token ids; `truncated` counts item tokens cut from the left."""

    prefix: list[int]
    truncated: int


class PromptFormat:
    """Token-level prompt format for one tokenizer, label set and invocation prompt."""

    def __init__(
        self,
        tokenizer: Any,
        labels: Sequence[str],
        invocation_prompt: str | None = None,
        max_length: int = 1024,
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
        ids = self._ids(item)
        self._last_item = (item, ids)
        return ids

    @staticmethod
    def requirement_line(requirement: str | None) -> str:
        return f"\nRequirement: {requirement or ''}\n"

    def room(self, requirement: str | None = None) -> int:
        """How many item tokens fit beside this requirement line, the invocation and the longest label."""
        return self._room(self._ids(self.requirement_line(requirement)))

    def _room(self, req_ids: list[int]) -> int:
        room = self.max_length - len(self.lead_ids) - len(req_ids) - self.suffix_budget
        if room < 1:
            raise DataError(
                f"--max-length {self.max_length} leaves no room for the item: the requirement line, "
                f"invocation and longest label take {self.max_length - room} tokens."
            )
        return room

    def encode(self, item: str, requirement: str | None = None, *, room: int | None = None) -> Encoded:
        """The prefix ids of one item: lead tokens, item (left-truncated to fit), requirement line.

        `room` (at most `self.room(requirement)`) lets several checks of one output cut its text at the
        same place, so that they can share its cache.
        """
        item_ids = self._item_ids(item)
        req_ids = self._ids(self.requirement_line(requirement))
        own = self._room(req_ids)  # the requirement line is tokenised once
        room = own if room is None else min(room, own)
        cut = max(0, len(item_ids) - room)
        return Encoded(prefix=[*self.lead_ids, *item_ids[cut:], *req_ids], truncated=cut)

    def full_ids(self, item: str, label: str, requirement: str | None = None) -> list[int]:
        """Prefix + invocation + label + end: the sequence the adapter is trained on."""
        return [*self.encode(item, requirement).prefix, *self.invocation_ids, *self.label_ids[label]]

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


JUDGE_QUESTION = (
    "Text:\n{item}\n\nRequirement: {requirement}\n\nDoes the text satisfy the requirement? Answer yes or no."
)


class JudgeFormat:
    """The base model as a yes/no judge: the same interface as PromptFormat, labels "yes" and "no".

    The text comes first in the question so that several requirements on one output share its prefix.
    """

    labels = ("yes", "no")

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        probe = [{"role": "user", "content": "x"}]
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        if self.chat:
            plain = tokenizer.apply_chat_template(probe, tokenize=False)
            asking = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
            self.invocation_prompt = asking[len(plain) :] if asking.startswith(plain) else "\nAnswer:"
        else:
            self.invocation_prompt = "\nAnswer:"
        self.invocation_ids = list(tokenizer(self.invocation_prompt, add_special_tokens=False)["input_ids"])
        space = "" if self.chat else " "
        self.label_ids = {
            label: list(tokenizer(space + word, add_special_tokens=False)["input_ids"])
            for label, word in zip(self.labels, ("Yes", "No"), strict=True)
        }
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else int(tokenizer.eos_token_id or 0)

    def room(self, requirement: str | None = None) -> int:
        return 2**62  # the judge never truncates: the base model's own context limit applies

    def encode(self, item: str, requirement: str | None = None, *, room: int | None = None) -> Encoded:
        question = JUDGE_QUESTION.format(item=item, requirement=requirement or "")
        if self.chat:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(question)["input_ids"]
        return Encoded(prefix=list(ids), truncated=0)
