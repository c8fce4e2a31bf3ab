"""The adapter directory without training: validora.json checks, the swap, recovery, free space, base identity.

Every case builds a small directory by hand (validora.json + the two PEFT file names); nothing here
loads a model, so the file runs in seconds. The real-training kill tests are in test_kill.py.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from collections import namedtuple
from pathlib import Path

import pytest
from typer.testing import CliRunner

from validora.adapter import saving
from validora.adapter.loading import CustomIntrinsicAdapter
from validora.adapter.schema import AdapterInfo
from validora.cli import app
from validora.core import files
from validora.core.names import base_key, same_base_model
from validora.errors import AdapterError

INFO = {
    "adapter_type": "alora",
    "base_model": "smollm2-135m-instruct",
    "labels": ["yes", "no"],
    "prompt": {
        "prompt_format_version": 1,
        "invocation_prompt": "<|im_start|>check_requirement\n",
        "invocation_ids": [1, 1921, 198],
        "eos_id": 2,
        "labels": ["yes", "no"],
        "label_ids": {"yes": [7, 2], "no": [8, 2]},
        "max_length": 1024,
    },
    "training": {},
    "metrics": {},
    "requirements": False,
    "format_version": 1,
    "validora_version": "0.1.0",
}


def make_adapter(directory: Path, info: dict | bytes | None = None, marker: str = "earlier") -> Path:
    """A directory AdapterInfo.read accepts; `marker` goes in metrics.json to tell adapters apart."""
    directory.mkdir(parents=True)
    raw = info if isinstance(info, bytes) else json.dumps(INFO if info is None else info).encode()
    (directory / "validora.json").write_bytes(raw)
    (directory / "adapter_config.json").write_text("{}")
    (directory / "adapter_model.safetensors").write_bytes(b"weights " + marker.encode())
    (directory / "metrics.json").write_text(json.dumps({"marker": marker}))
    return directory


def marker(directory: Path) -> str:
    return json.loads((directory / "metrics.json").read_text())["marker"]


def with_(**changes: object) -> dict:
    info = json.loads(json.dumps(INFO))
    for key, value in changes.items():
        head, _, sub = key.partition("__")
        target = info[head] if sub else info
        name = sub or head
        if value is DROP:
            del target[name]
        else:
            target[name] = value
    return info


DROP = object()
Bad = namedtuple("Bad", "id content field")
MALFORMED = [
    Bad("json-array", b"[1, 2]", "JSON object"),
    Bad("latin-1", json.dumps(with_(base_model="caf\u00e9"), ensure_ascii=False).encode("latin-1"), "not UTF-8"),
    Bad("not-json", b'{"adapter_type": ', "unreadable"),
    Bad("format-version-string", with_(format_version="2"), "'format_version'"),
    Bad("format-version-bool", with_(format_version=True), "'format_version'"),
    Bad("newer-format", with_(format_version=99), "newer validora"),
    Bad("newer-prompt-format", with_(prompt__prompt_format_version=99), "newer validora"),
    Bad("prompt-without-invocation", with_(prompt__invocation_prompt=DROP), "'prompt.invocation_prompt' is missing"),
    Bad("prompt-not-object", with_(prompt="<|im_start|>"), "'prompt'"),
    Bad("prompt-missing", with_(prompt=DROP), "'prompt' is missing"),
    Bad("labels-missing", with_(labels=DROP), "'labels' is missing"),
    Bad("labels-not-list", with_(labels="yes,no"), "'labels'"),
    Bad("labels-not-strings", with_(labels=["yes", 1]), "'labels'"),
    Bad("labels-empty-string", with_(labels=["yes", ""]), "'labels'"),
    Bad("one-label", with_(labels=["yes"]), "'labels'"),
    Bad("duplicate-labels", with_(labels=["yes", "yes"]), "distinct"),
    Bad("adapter-type-unknown", with_(adapter_type="qlora"), "'adapter_type'"),
    Bad("adapter-type-missing", with_(adapter_type=DROP), "'adapter_type' is missing"),
    Bad("base-model-number", with_(base_model=7), "'base_model'"),
    Bad("base-model-empty", with_(base_model=""), "'base_model'"),
    Bad("invocation-ids-strings", with_(prompt__invocation_ids=["1", "2"]), "'prompt.invocation_ids'"),
    Bad("invocation-ids-empty", with_(prompt__invocation_ids=[]), "'prompt.invocation_ids'"),
    Bad("invocation-ids-negative", with_(prompt__invocation_ids=[-1]), "'prompt.invocation_ids'"),
    Bad("label-ids-missing", with_(prompt__label_ids=DROP), "'prompt.label_ids' is missing"),
    Bad("label-ids-other-labels", with_(prompt__label_ids={"yes": [7, 2], "maybe": [9, 2]}), "'prompt.label_ids'"),
    Bad("label-ids-not-ids", with_(prompt__label_ids={"yes": "7", "no": [8, 2]}), "'prompt.label_ids'"),
    Bad("prompt-labels-differ", with_(prompt__labels=["no", "yes"]), "'prompt.labels'"),
    Bad("max-length-string", with_(prompt__max_length="1024"), "'prompt.max_length'"),
    Bad("max-length-zero", with_(prompt__max_length=0), "'prompt.max_length'"),
    Bad("eos-id-float", with_(prompt__eos_id=2.5), "'prompt.eos_id'"),
    Bad("training-list", with_(training=[]), "'training'"),
    Bad("metrics-string", with_(metrics="good"), "'metrics'"),
    Bad("requirements-string", with_(requirements="yes"), "'requirements'"),
    Bad("version-number", with_(validora_version=1), "'validora_version'"),
]  # fmt: skip


def test_a_well_formed_validora_json_reads(tmp_path: Path):
    info = AdapterInfo.read(make_adapter(tmp_path / "a"))
    assert info.labels == ["yes", "no"] and info.invocation_prompt.startswith("<|im_start|>")


@pytest.mark.parametrize("case", MALFORMED, ids=[c.id for c in MALFORMED])
def test_malformed_validora_json_is_an_adapter_error_naming_file_and_field(tmp_path: Path, case: Bad):
    content = case.content if isinstance(case.content, bytes) else json.dumps(case.content).encode()
    directory = make_adapter(tmp_path / "a", content)
    with pytest.raises(AdapterError) as raised:
        AdapterInfo.read(directory)
    assert case.field in str(raised.value)
    assert str(directory) in str(raised.value)


def test_malformed_validora_json_through_the_cli_is_a_message(tmp_path: Path):
    directory = make_adapter(tmp_path / "a", json.dumps(with_(prompt__invocation_prompt=DROP)).encode())
    result = CliRunner().invoke(app, ["alora", "predict", str(directory), "some text"])
    assert result.exit_code == 1 and "'prompt.invocation_prompt' is missing" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, KeyError)


# ----- the swap and what a killed save leaves ------------------------------------------------------


def fill(staging: Path, mark: str) -> None:
    """What Trainer.save writes, in miniature."""
    (staging / "validora.json").write_text(json.dumps(INFO))
    (staging / "adapter_config.json").write_text("{}")
    (staging / "adapter_model.safetensors").write_bytes(b"weights " + mark.encode())
    (staging / "metrics.json").write_text(json.dumps({"marker": mark}))


def test_sigterm_between_the_two_renames_waits_for_the_swap(tmp_path: Path, monkeypatch):
    """The signal used to land between the renames: no --outfile, new adapter deleted, old one stranded."""
    target = make_adapter(tmp_path / "adapter")

    def pause(moment: str) -> None:
        if moment == "between renames":
            os.kill(os.getpid(), signal.SIGTERM)

    def as_interrupt(signum, frame):
        raise KeyboardInterrupt

    monkeypatch.setattr(saving, "_pause_for_tests", pause)
    previous = signal.signal(signal.SIGTERM, as_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt), saving.staged_directory(target, overwrite=True) as staging:
            fill(staging, "new")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert marker(target) == "new" and AdapterInfo.read(target).labels == ["yes", "no"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # nothing stranded


def test_sigint_while_staging_keeps_the_earlier_adapter(tmp_path: Path, monkeypatch):
    target = make_adapter(tmp_path / "adapter")

    def pause(moment: str) -> None:
        if moment == "staged":
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(saving, "_pause_for_tests", pause)
    with pytest.raises(KeyboardInterrupt), saving.staged_directory(target, overwrite=True) as staging:
        fill(staging, "new")
    assert marker(target) == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def leftover(tmp_path: Path, kind: str, mark: str, name: str = "adapter") -> Path:
    return make_adapter(tmp_path / f".{name}.{kind}-{mark}", marker=mark)


def test_a_kill_between_the_renames_is_undone_by_the_next_run(tmp_path: Path):
    """SIGKILL after the first rename: --outfile missing, earlier adapter at .NAME.old-*, new at .partial-*."""
    leftover(tmp_path, "old", "earlier")
    leftover(tmp_path, "partial", "new")
    target = tmp_path / "adapter"
    with pytest.warns(UserWarning, match="restored the earlier adapter") as caught:
        saving.check_target(target, overwrite=True)
    assert len(caught) == 1 and ".adapter.partial-new" in str(caught[0].message)  # one line says it all
    assert marker(target) == "earlier" and AdapterInfo.read(target).base_model == "smollm2-135m-instruct"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_without_overwrite_the_restored_adapter_is_still_protected(tmp_path: Path):
    leftover(tmp_path, "old", "earlier")
    with (
        pytest.warns(UserWarning, match="restored"),
        pytest.raises(AdapterError, match="overwrite is needed") as raised,
    ):
        saving.check_target(tmp_path / "adapter", overwrite=False)
    assert marker(tmp_path / "adapter") == "earlier" and raised.value.option == "overwrite"


def test_stale_staging_and_old_copies_are_swept(tmp_path: Path):
    target = make_adapter(tmp_path / "adapter", marker="current")
    leftover(tmp_path, "partial", "p1")
    leftover(tmp_path, "old", "o1")
    (tmp_path / ".adapter.probe-x").mkdir()
    (tmp_path / ".other.partial-x").mkdir()  # another target's: not ours to judge
    with pytest.warns(UserWarning, match="removed .adapter.old-o1, .adapter.partial-p1, .adapter.probe-x"):
        saving.check_target(target, overwrite=True)
    assert marker(target) == "current"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.partial-x", "adapter"]


def test_an_old_copy_holding_user_files_is_kept_and_named(tmp_path: Path):
    target = make_adapter(tmp_path / "adapter", marker="current")
    old = leftover(tmp_path, "old", "o1")
    (old / "io.yaml").write_text("model: null\n")
    with pytest.warns(UserWarning, match="kept .adapter.old-o1"):
        saving.recover(target)
    assert (old / "io.yaml").is_file()


def test_leftovers_of_a_run_in_progress_are_left_alone(tmp_path: Path):
    """A live writer holds a lock on its staging directory and on the earlier adapter it moved aside."""
    staging = leftover(tmp_path, "partial", "live")
    old = leftover(tmp_path, "old", "live")
    locks = [files.try_lock(staging), files.try_lock(old)]
    assert None not in locks
    try:
        assert saving.recover(tmp_path / "adapter") is None
        assert staging.is_dir() and old.is_dir() and not (tmp_path / "adapter").exists()
    finally:
        for fd in locks:
            os.close(fd)
    with pytest.warns(UserWarning, match="restored"):  # the writer died: now they are leftovers
        saving.recover(tmp_path / "adapter")
    assert marker(tmp_path / "adapter") == "live"


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_loading_never_recovers_it_only_says_the_next_save_will(tmp_path: Path):
    """Reads never write: a stranded earlier adapter stays where the killed save left it."""
    leftover(tmp_path, "old", "earlier")
    leftover(tmp_path, "partial", "new")
    before = listing(tmp_path)
    for load in (lambda: CustomIntrinsicAdapter(model_id=str(tmp_path / "adapter")),
                 lambda: AdapterInfo.read(tmp_path / "adapter")):  # fmt: skip
        with (
            pytest.warns(UserWarning, match="earlier adapter is in .adapter.old-earlier") as caught,
            pytest.raises(AdapterError, match="not found"),
        ):
            load()
        assert "mv " in str(caught[0].message) and "next save" in str(caught[0].message)
        assert listing(tmp_path) == before
    with (
        pytest.warns(UserWarning, match="restored the earlier adapter"),  # the next save recovers it
        saving.staged_directory(tmp_path / "adapter", overwrite=True) as staging,
    ):
        fill(staging, "new")
    assert marker(tmp_path / "adapter") == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_leftover_beside_an_adapter_is_left_alone_by_loading_and_swept_by_the_next_save(tmp_path: Path):
    target = make_adapter(tmp_path / "adapter")
    leftover(tmp_path, "partial", "dead")
    before = listing(tmp_path)
    assert CustomIntrinsicAdapter(model_id=str(target)).labels == ["yes", "no"]
    assert AdapterInfo.read(target).labels == ["yes", "no"] and listing(tmp_path) == before
    with (
        pytest.warns(UserWarning, match="removed .adapter.partial-dead"),
        saving.staged_directory(target, overwrite=True) as staging,
    ):
        fill(staging, "new")
    assert marker(target) == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


# ----- user files, writability, full disk -----------------------------------------------------------


def test_overwrite_keeps_files_validora_does_not_write(tmp_path: Path):
    target = make_adapter(tmp_path / "adapter")
    (target / "io.yaml").write_text("model: null\n")
    (target / "notes.txt").write_text("mine")
    (target / "extra").mkdir()
    (target / "extra" / "x.txt").write_text("deep")
    (target / "README.md").write_text("old card")  # validora's: replaced
    kept = r"Kept 3 file\(s\) .*: extra, io.yaml, notes.txt"
    with pytest.warns(UserWarning, match=kept), saving.staged_directory(target, overwrite=True) as staging:
        fill(staging, "new")
        (staging / "README.md").write_text("new card")
    assert marker(target) == "new" and (target / "README.md").read_text() == "new card"
    assert (target / "io.yaml").read_text() == "model: null\n" and (
        target / "notes.txt"
    ).read_text() == "mine"
    assert (target / "extra" / "x.txt").read_text() == "deep"


def test_an_unwritable_outfile_is_refused_at_setup(tmp_path: Path, small_data: Path):
    """Before: found out after training. A parent that is a file cannot hold a directory."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(AdapterError, match=r"outfile .* cannot be written"):
        saving.check_target(blocker / "adapter", overwrite=False)
    result = CliRunner().invoke(
        app, ["alora", "train", str(small_data), "--outfile", str(blocker / "adapter"), "--device", "cpu"]
    )
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and f"--outfile {blocker / 'adapter'} cannot be written" in said, said
    assert "Loading base model" not in result.output  # refused before any model is loaded


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_parent_is_refused_at_setup(tmp_path: Path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(AdapterError, match="cannot be written"):
            saving.check_target(parent / "adapter", overwrite=False)
    finally:
        parent.chmod(0o755)


def test_too_little_free_space_is_refused_at_setup(tmp_path: Path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(
        saving.shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 10 * 2**20, 10 * 2**20)
    )
    with pytest.raises(AdapterError, match=r"not enough free space, 10 MiB free .*100 MiB needed"):
        saving.check_target(tmp_path / "adapter", overwrite=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        ),
    ],
    ids=["oserror", "safetensors"],
)
def test_a_full_disk_while_saving_is_a_clear_error_and_keeps_the_earlier_adapter(tmp_path: Path, error):
    target = make_adapter(tmp_path / "adapter")
    kept = "earlier adapter there is kept. The disk is full: free some space"
    with (
        pytest.raises(AdapterError, match=kept),
        saving.staged_directory(target, overwrite=True) as staging,
    ):
        fill(staging, "new")
        raise error
    assert marker(target) == "earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


# ----- base-model identity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("/a/granite", "/b/granite", False),
        ("/a/granite", "/a/granite/", True),
        ("/a/x/../granite", "/a/granite", True),
        ("/a/granite", "ibm-granite/granite", False),
        ("granite-3.2-8b-instruct", "ibm-granite/granite-3.2-8b-instruct", True),  # Mellea short form
        ("ibm-granite/Granite-3.2-8B-Instruct", "ibm-granite/granite-3.2-8b-instruct", True),
        ("someone/granite-3.2-8b-instruct", "ibm-granite/granite-3.2-8b-instruct", False),
        ("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", True),  # embedded alias
        ("SmolLM2-135M-Instruct", "smollm2-135m-instruct", True),
        ("granite", "/a/granite", True),  # a published adapter keeps only the last component
        ("granite-3.2-2b-instruct", "ibm-granite/granite-3.2-8b-instruct", False),
    ],
)
def test_base_models_compare_exactly_for_paths(a: str, b: str, same: bool):
    assert same_base_model(a, b) is same and same_base_model(b, a) is same


def test_base_key_tells_local_paths_apart():
    assert base_key("/a/granite") != base_key("/b/granite")
    assert base_key("granite-3.2-8b-instruct") == base_key("ibm-granite/granite-3.2-8b-instruct")
    assert base_key("smollm2-135m-instruct") == base_key("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_an_adapter_on_another_local_base_model_is_refused(tmp_path: Path):
    directory = make_adapter(tmp_path / "a", with_(base_model="/models/a/granite"))
    with pytest.raises(AdapterError, match="trained on base model '/models/a/granite'"):
        CustomIntrinsicAdapter(model_id=str(directory), base_model_name="/models/b/granite")
    assert CustomIntrinsicAdapter(model_id=str(directory), base_model_name="/models/a/granite").name == "a"
    assert CustomIntrinsicAdapter(model_id=str(directory), base_model_name="granite").labels == ["yes", "no"]
