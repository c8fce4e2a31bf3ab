"""The conversation a Session carries from call to call."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ChatContext:
    """Messages in chat-template form; grows by one user and one assistant turn per call."""

    messages: list[dict[str, str]] = field(default_factory=list)
    system: str | None = None

    def as_messages(self, *extra: dict[str, str]) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, *self.messages, *extra]

    def add(self, role: str, content: str) -> None:
        self.messages.append({"role": role, "content": content})

    def last_assistant(self) -> str | None:
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "assistant"), None)

    def __len__(self) -> int:
        return len(self.messages)
