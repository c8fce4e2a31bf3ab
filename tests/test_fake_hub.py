"""The fake Hub, driven only through the real huggingface_hub client (no network, a few seconds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalTokenNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .fake_hub import DEFAULT_GITATTRIBUTES, USER, FakeHub

REPO = f"{USER}/engine-alora"


@pytest.fixture
def adapter_dir(tmp_path) -> Path:
    """A small adapter-like folder: JSON config, a binary safetensors blob, a README and a subfolder."""
    folder = tmp_path / "adapter"
    (folder / "extra").mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(100_000))
    (folder / "README.md").write_text("---\nlibrary_name: peft\n---\n# engine adapter\n")
    (folder / "extra" / "labels.txt").write_text("piston_rings\nno_failure\n")
    return folder


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def requested(hub: FakeHub, marker: str) -> list[tuple[str, str]]:
    return [(method, path) for method, path in hub.requests if marker in path]


def test_whoami_and_private_repo(hub):
    api = HfApi()
    assert api.whoami()["name"] == USER
    url = api.create_repo(REPO, private=True)
    assert (url.repo_id, url.endpoint) == (REPO, hub.endpoint)
    info = api.model_info(REPO)
    assert info.private is True and info.sha == hub.commits(REPO)[-1].oid
    assert hub.files(REPO) == {".gitattributes": DEFAULT_GITATTRIBUTES}  # like the Hub's initial commit
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info(REPO)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(REPO, ".gitattributes", token=False)


def test_create_repo_exist_ok(hub):
    api = HfApi()
    api.create_repo(REPO)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(REPO)
    assert err.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    assert huggingface_hub.create_repo(REPO, exist_ok=True).repo_id == REPO  # module-level helper too
    assert len(hub.commits(REPO)) == 1


def test_upload_folder_then_snapshot_round_trip(hub, adapter_dir, tmp_path):
    api = HfApi()
    api.create_repo(REPO, private=True)
    info = api.upload_folder(repo_id=REPO, folder_path=adapter_dir, commit_message="Add adapter")
    expected = local_files(adapter_dir)
    assert info.oid == hub.commits(REPO)[-1].oid and hub.commits(REPO)[-1].title == "Add adapter"
    assert hub.files(REPO) == {".gitattributes": DEFAULT_GITATTRIBUTES, **expected}
    assert sorted(api.list_repo_files(REPO)) == sorted([".gitattributes", *expected])

    snapshot = Path(snapshot_download(REPO))
    assert snapshot.is_relative_to(tmp_path / "hf_home" / "hub")  # the temporary cache, not the user's
    assert {k: v for k, v in local_files(snapshot).items() if k != ".gitattributes"} == expected
    assert Path(hf_hub_download(REPO, "extra/labels.txt")).read_bytes() == expected["extra/labels.txt"]

    # Same content again: the client sees the preupload oids match and makes no new commit.
    api.upload_folder(repo_id=REPO, folder_path=adapter_dir)
    assert len(hub.commits(REPO)) == 2


def test_listings_describe_files_like_the_hub(hub, adapter_dir):
    api = HfApi()
    api.create_repo(REPO)
    api.upload_folder(repo_id=REPO, folder_path=adapter_dir)
    top = {e.path: type(e).__name__ for e in api.list_repo_tree(REPO)}
    assert top == {".gitattributes": "RepoFile", "README.md": "RepoFile", "adapter_config.json": "RepoFile",
                   "adapter_model.safetensors": "RepoFile", "extra": "RepoFolder"}  # fmt: skip
    (labels,) = api.list_repo_tree(REPO, path_in_repo="extra")
    assert (labels.path, labels.size) == ("extra/labels.txt", len(b"piston_rings\nno_failure\n"))
    sizes = {s.rfilename: s.size for s in api.model_info(REPO, files_metadata=True).siblings}
    assert sizes["adapter_model.safetensors"] == 100_000


def test_writes_without_token_fail_and_commit_nothing(hub, adapter_dir, monkeypatch):
    api = HfApi()
    api.create_repo(REPO)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_folder(repo_id=REPO, folder_path=adapter_dir)
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError):
        api.create_repo(f"{USER}/other")
    with pytest.raises(LocalTokenNotFoundError):
        api.whoami()
    assert not requested(hub, "/commit/")
    assert len(hub.commits(REPO)) == 1


def test_wrong_token_is_rejected_and_not_echoed(hub):
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_wrong_secret").create_repo(REPO)
    assert err.value.response.status_code == 401
    assert "hf_wrong_secret" not in str(err.value) and hub.token not in err.value.response.text


def test_commit_failure_leaves_repo_unchanged(hub, adapter_dir):
    api = HfApi()
    api.create_repo(REPO)
    hub.fail_next("commit", status=500)
    add = CommitOperationAdd(path_in_repo="adapter_config.json", path_or_fileobj=b"{}")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit(repo_id=REPO, operations=[add], commit_message="boom")
    assert err.value.response.status_code == 500
    hub.fail_next("commit", status=403)  # upload_folder retries 5xx commits, not 4xx
    with pytest.raises(HfHubHTTPError):
        api.upload_folder(repo_id=REPO, folder_path=adapter_dir)
    assert hub.files(REPO) == {".gitattributes": DEFAULT_GITATTRIBUTES}
    assert len(requested(hub, "/commit/")) == 2


def test_transient_errors_are_retried_by_the_client(hub, adapter_dir):
    api = HfApi()
    api.create_repo(REPO)
    hub.fail_next("commit", status=503)  # upload_folder's commit: retried after 1 s
    api.upload_folder(repo_id=REPO, folder_path=adapter_dir)
    assert len(requested(hub, "/commit/")) == 2
    hub.fail_next("download", status=500)  # the metadata HEAD: retried at once
    assert Path(hf_hub_download(REPO, "adapter_config.json")).read_bytes() == b'{"r": 8, "peft_type": "LORA"}'


def test_branch_upload_and_download(hub, adapter_dir):
    api = HfApi()
    api.create_repo(REPO)
    with pytest.raises(RevisionNotFoundError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, revision="dev")
    api.create_branch(REPO, branch="dev")
    api.create_branch(REPO, branch="dev", exist_ok=True)
    api.upload_folder(repo_id=REPO, folder_path=adapter_dir, revision="dev")
    assert "adapter_config.json" in api.list_repo_files(REPO, revision="dev")
    assert api.list_repo_files(REPO) == [".gitattributes"]
    assert [b.name for b in api.list_repo_refs(REPO).branches] == ["main", "dev"]
    snapshot = Path(snapshot_download(REPO, revision="dev"))
    assert (snapshot / "extra" / "labels.txt").read_bytes() == (
        adapter_dir / "extra" / "labels.txt"
    ).read_bytes()
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "adapter_config.json", revision="nope")


def test_fail_next_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="unknown kind"):
        FakeHub().fail_next("comit")
