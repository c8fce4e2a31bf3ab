"""Hugging Face Hub access through huggingface_hub (never hand-written HTTP); tokens are never printed.

The endpoint comes from HF_ENDPOINT and the token from HF_TOKEN or the stored `hf auth login`, as
huggingface_hub reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from validora.adapter import layouts
from validora.errors import AdapterError, HubError


def download_adapter(
    repo_id: str,
    *,
    revision: str | None = None,
    intrinsic_name: str | None = None,
    base_model_name: str | None = None,
) -> Path:
    """A local snapshot holding the chosen adapter's files, and no other file of the repository.

    The repository is listed first and the adapter chosen by the layouts rules, so other adapters,
    pickles and data files never reach the disk. Offline (HF_HUB_OFFLINE) or with the Hub unreachable,
    the listing cached by an earlier download is used; the cache is honoured either way.
    """
    import glob

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        files = _listing(repo_id, revision)
        if files is None:  # cached by a client that kept no listing: the snapshot as it is
            return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        try:
            found = layouts.choose(files, intrinsic_name=intrinsic_name, base_model_name=base_model_name)
        except LookupError as exc:
            raise AdapterError(f"{repo_id}: {exc}") from None
        wanted = [glob.escape(f) for f in layouts.files_of(files, found)]  # exact names, not patterns
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=wanted))
    except LocalEntryNotFoundError:
        raise HubError(
            f"Adapter {repo_id!r} is not in the local Hugging Face cache and the Hub cannot be reached "
            "(HF_HUB_OFFLINE may be set). Download it once with network access, or pass a local directory."
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"No adapter repository {repo_id!r} on the Hub (or it is private and no token is set)."
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"Repository {repo_id!r} has no revision {revision!r}.") from None
    except AdapterError:
        raise
    except Exception as exc:  # network errors
        raise HubError(f"Could not download adapter {repo_id!r}: {_reason(exc)}") from None


def _listing(repo_id: str, revision: str | None) -> list[str] | None:
    """Every file path of the repository: from the Hub, else from the cache's listing, else None."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        return HfApi().list_repo_files(repo_id, revision=revision)
    except RepositoryNotFoundError:  # includes gated repositories
        raise
    except HfHubHTTPError as exc:  # a missing revision or a refused token is an answer; 5xx is not
        if getattr(exc.response, "status_code", None) in (401, 403, 404):
            raise
    except Exception:  # offline mode, no network, timeouts (httpx errors are not OSErrors)
        pass
    try:
        from huggingface_hub import get_cached_repo_tree
    except ImportError:  # an older huggingface_hub keeps no listing in its cache
        return None
    try:
        return [f.path for f in get_cached_repo_tree(repo_id, revision=revision)]
    except Exception:  # CachedRepoTreeNotFoundError: this revision's listing is not cached
        return None


def token() -> str:
    """The user's token, or a clear error before anything is sent."""
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise HubError(
            "No Hugging Face token: set HF_TOKEN or run `hf auth login`, then retry. Nothing was uploaded."
        )
    return found


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise HubError(f"repo_id {repo_id!r} is not a valid repository id: {exc}", option="repo_id") from None
    if repo_id.count("/") != 1:
        raise HubError(f"repo_id {repo_id!r} must be ORG/NAME (or USER/NAME).", option="repo_id")


@dataclass(frozen=True)
class Uploaded:
    repo_url: str
    commit_oid: str
    commit_url: str
    created: bool  # the repository did not exist before


def upload_files(
    folder: Path,
    repo_id: str,
    *,
    private: bool,
    revision: str | None = None,
    commit_message: str,
    root_readme: str | None = None,
    stale: Callable[[set[str], set[str]], set[str]] = lambda remote, local: set(),
) -> Uploaded:
    """Create the repository when missing and upload every file under `folder` in one commit.

    `root_readme` is added as the repository's README.md only when it has none yet (an intrinsics
    repository may hold other adapters and their card). `stale(remote, local)` names remote files
    the same commit deletes (what an earlier upload of this adapter left behind). An existing public
    repository is refused unless `private` is False: a default upload never lands in public.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    secret = token()
    api = HfApi(token=secret)
    try:
        created = not api.repo_exists(repo_id)
        if not created:
            is_private = api.model_info(repo_id).private
            if private and not is_private:
                raise HubError(
                    f"public is needed to publish into {repo_id}: it already exists and is PUBLIC. "
                    "Or choose another repository name.",
                    option="public",
                )
            if not private and is_private:
                raise HubError(
                    f"public does not change an existing repository: {repo_id} exists and is private. "
                    "Change its visibility on the Hub, or upload without public.",
                    option="public",
                )
        repo_url = str(api.create_repo(repo_id, private=private, exist_ok=True))
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        remote = set(api.list_repo_files(repo_id, revision=revision))
        if root_readme is not None and "README.md" not in remote:
            (folder / "README.md").write_text(root_readme, encoding="utf-8")
        local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        # create_commit, not upload_folder: exactly one commit (upload_folder splits a failing commit
        # into several, which could leave half an adapter in the repository).
        operations: list[Any] = [
            CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(folder / rel)) for rel in local
        ]
        operations += [CommitOperationDelete(path_in_repo=rel) for rel in sorted(stale(remote, set(local)))]
        info = api.create_commit(
            repo_id, operations=operations, commit_message=commit_message, revision=revision
        )
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        hint = (
            " The token was refused: check HF_TOKEN (or run `hf auth login`) and that it may write to "
            f"{repo_id.split('/')[0]}."
            if status in (401, 403)
            else ""
        )
        raise HubError(
            f"Upload to {repo_id!r} failed: {_reason(exc)}.{hint} Your local files are unchanged."
        ) from None
    except HubError:
        raise
    except Exception as exc:  # connection refused, DNS, timeouts (httpx errors are not OSErrors)
        raise HubError(
            f"Could not reach the Hub at {_endpoint()} to upload {repo_id!r}: {_reason(exc)}. "
            "Your local files are unchanged."
        ) from None
    return Uploaded(repo_url=repo_url, commit_oid=info.oid, commit_url=info.commit_url, created=created)


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _reason(exc: Exception) -> str:
    """The server's message without request details (headers are never included, so no token)."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    message = getattr(exc, "server_message", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    return f"HTTP {status}: {message}" if status else message
