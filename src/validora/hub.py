"""Hugging Face Hub access through huggingface_hub (never hand-written HTTP); tokens are never printed."""

from __future__ import annotations

from pathlib import Path

from validora.errors import HubError


def download_adapter(repo_id: str, *, revision: str | None = None) -> Path:
    """A local snapshot of an adapter repository; the cache is honoured and HF_HUB_OFFLINE works once cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except LocalEntryNotFoundError:
        raise HubError(
            f"Adapter {repo_id!r} is not in the local Hugging Face cache and the Hub cannot be reached "
            "(HF_HUB_OFFLINE may be set). Download it once with network access, or pass a local directory."
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"No adapter repository {repo_id!r} on the Hub (or it is private and no token is set)."
        ) from None
    except Exception as exc:  # network errors, bad revisions
        raise HubError(f"Could not download adapter {repo_id!r}: {exc}") from None
