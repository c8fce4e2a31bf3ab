"""The one JSON reader for files a user or a hub repository hands us.

`json.loads` turns deep nesting into a `RecursionError` (a traceback, or a crash later in code that walks
the result) and accepts lone surrogates ("\\ud800") that fail only when the text is encoded again, lines
later. Both are refused here, at the read, with a `ValueError` each caller words as its own error.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64  # far deeper than any file validora reads or writes


def parse_json(text: str | bytes) -> Any:
    """`json.loads`, refusing nesting deeper than MAX_DEPTH and strings holding lone surrogates."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"it is nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise ValueError(str(exc)) from None
    except UnicodeDecodeError:
        raise ValueError("it is not UTF-8 text") from None
    check_value(value)
    return value


def check_value(value: Any) -> None:
    """Refuse what `parse_json` refuses in an already parsed value (iteratively: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if has_surrogate(item):
                raise ValueError(f"the text {item[:40]!r} holds a lone surrogate (not valid Unicode)")
            continue
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise ValueError(f"it is nested deeper than {MAX_DEPTH} levels")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def has_surrogate(text: str) -> bool:
    """Whether `text` holds a lone surrogate: it cannot be encoded as UTF-8 (nor tokenized or written)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
