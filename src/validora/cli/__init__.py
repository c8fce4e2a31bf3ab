"""The `m` command. `main` takes over SIGTERM before the app (and torch) is imported: a `kill` in the first
seconds gets the same clean exit as Ctrl-C, not a bare 143."""

from __future__ import annotations

from typing import Any


def main() -> None:
    import signal
    import sys

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        from validora.cli.commands import app
    except KeyboardInterrupt:
        print("Interrupted. Nothing was written.", file=sys.stderr)
        sys.exit(130)
    app()


def __getattr__(name: str) -> Any:
    if name == "app":  # `from validora.cli import app`
        from validora.cli.commands import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
