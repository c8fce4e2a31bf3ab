"""The one JSON-over-HTTP call validora makes to llama-server (the backend, `serve` and the build's probe).

Every way a request can fail (refused, timed out, dropped, an HTTP error, an answer that is not JSON) is
a `LlamaCppError` that says which, where and for what path: a server lost mid-run is a message, never a
bare urllib traceback.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from typing import Any

from validora.errors import LlamaCppError

API_KEY_ENV = "VALIDORA_API_KEY"  # the key `m alora serve` gives llama-server, and its clients send


def request_json(
    base_url: str, path: str, body: Any = None, *, timeout: float, api_key: str | None = None
) -> Any:
    """GET `base_url + path` (POST `body` as JSON when given) and return the decoded JSON answer;
    `api_key` goes as `Authorization: Bearer` (a server started with one refuses requests without it)."""
    url = base_url + path
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            raw = answer.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        with contextlib.suppress(ValueError, KeyError, TypeError, RecursionError):
            detail = json.loads(detail)["error"]["message"]
        hint = f" It wants an API key: pass api_key= (or set {API_KEY_ENV})." if exc.code == 401 else ""
        raise LlamaCppError(
            f"llama-server at {base_url} answered {path} with HTTP {exc.code}: {detail}{hint}"
        ) from None
    except TimeoutError:
        raise LlamaCppError(
            f"llama-server at {base_url} did not answer {path} within {timeout:g} s "
            "(pass a larger timeout=, or start it with more parallel slots)."
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise LlamaCppError(
                f"llama-server at {base_url} did not answer {path} within {timeout:g} s."
            ) from None
        if isinstance(reason, ConnectionRefusedError):
            raise LlamaCppError(
                f"No llama-server answers at {base_url} (connection refused); start one with "
                "`m alora serve ADAPTER...`."
            ) from None
        raise LlamaCppError(f"Cannot reach llama-server at {base_url}: {reason}.") from None
    except (ConnectionError, OSError) as exc:  # reset, closed without an answer (a crashed server)
        raise LlamaCppError(f"llama-server at {base_url} dropped {path}: {exc}.") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise LlamaCppError(f"llama-server at {base_url} answered {path} with something not JSON.") from None
