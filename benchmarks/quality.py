"""The quality suite: validora against TF-IDF + LR, a frozen-feature probe and SetFit, on seven small sets.

One command, one table (datasets as rows; per method test accuracy, macro-F1, ECE and training seconds,
plus an average row):

    .venv/bin/python benchmarks/quality.py                                  # everything
    .venv/bin/python benchmarks/quality.py --methods validora --set rank=8 --set epochs=10 --label r8-e10
    .venv/bin/python benchmarks/quality.py --sets engine,books --methods tfidf,probe --json out.json

The sets are described in `quality_data.py`. Baseline results (tfidf, probe, setfit) are cached per
split (a hash of its rows) under ``<cache>/quality/results/``, so another validora variant only trains
validora; each validora run is stored there too under its ``--label``, and ``--also LABEL,...`` puts
earlier variants in the table beside it. validora trains with ``Trainer(TrainConfig(datafile=<set>/
train.jsonl, device="cpu", recipe=Recipe(**--set overrides)))`` (its own 80/20 split inside), then
scores the test rows with the in-memory adapter at its fitted temperature. SetFit (minutes per set on 2
cores) is described in `baselines.py`; run it alone in the background with ``nice -n 19 ... --methods
setfit``.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines
from quality_data import BUILDERS, cache_root, load_set, split_hash

METHODS = ("tfidf", "probe", "setfit", "validora")
BASELINE_VERSION = 1  # bump when a baseline's definition changes, so cached results are not reused


class Log:
    """Progress for the Trainer: one line per message, nothing per step."""

    def start(self, description: str, total: int) -> None:
        print(f"    {description} ({total})", flush=True)

    def advance(self, n: int = 1) -> None:
        pass

    def log(self, message: str) -> None:
        print(f"    {message}", flush=True)


def _parse_value(text: str) -> Any:
    """A --set value: JSON when it parses (numbers, true/false, lists), otherwise the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _recipe_keys() -> set[str]:
    from validora.train.trainer import Recipe

    return set(inspect.signature(Recipe).parameters)


def _run_keys() -> set[str]:
    """TrainConfig's run options but those the suite sets itself (data, output) and the recipe."""
    from validora.train.trainer import TrainConfig

    return set(inspect.signature(TrainConfig).parameters) - {"datafile", "outfile", "recipe"}


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as overrides of a Recipe field or a TrainConfig run option (device,
    basemodel, promptfile...); unknown keys are refused by name."""
    known = _recipe_keys() | _run_keys()
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        out[key] = _parse_value(value)
    return out


class Suite:
    """Runs methods on sets, with the per-split result cache, and remembers the loaded base model."""

    def __init__(self, basemodel: str | None, seed: int = 0):
        self.basemodel = basemodel
        self.seed = seed
        self.results_dir = cache_root() / "quality" / "results"
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self._loaded: Any = None

    def loaded(self) -> Any:
        if self._loaded is None:
            from validora.core.models import load_base_model

            self._loaded = load_base_model(self.basemodel, device="cpu")
        return self._loaded

    def _key(self, name: str, digest: str, method: str, label: str | None = None) -> Path:
        settings: dict[str, Any] = {"v": BASELINE_VERSION, "seed": self.seed}
        if method == "probe":
            settings["basemodel"] = self.basemodel
        if method == "setfit":
            settings.update(baselines.SETFIT_SETTINGS)
        tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
        if method == "validora":
            tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in label or "validora")
        return self.results_dir / f"{name}-{digest}-{method}-{tag}.json"

    def baseline(
        self, name: str, method: str, train: list, test: list, digest: str, cached_only: bool = False
    ) -> dict[str, Any] | None:
        path = self._key(name, digest, method)
        if path.is_file():
            return json.loads(path.read_text())
        if cached_only:
            return None
        if method == "tfidf":
            result = baselines.tfidf(train, test, self.seed)
        elif method == "probe":
            result = baselines.probe(train, test, self.loaded(), self.seed)
        else:
            result = baselines.setfit(train, test, cache_root(), self.seed)
        _write_json(path, result)
        return result

    def validora(
        self, name: str, folder: Path, test: list, digest: str, overrides: dict[str, Any], label: str
    ) -> dict[str, Any]:
        """Train with the Trainer on the set's train.jsonl, then score the test rows."""
        from validora.score.scoring import score_items
        from validora.train.trainer import Recipe, TrainConfig, Trainer

        with tempfile.TemporaryDirectory(prefix="validora-quality-") as tmp:
            settings = {"device": "cpu", "seed": self.seed, "basemodel": self.basemodel, **overrides}
            recipe = Recipe(**{k: v for k, v in settings.items() if k in _recipe_keys()})
            config = TrainConfig(
                datafile=str(folder / "train.jsonl"), outfile=str(Path(tmp) / "adapter"), recipe=recipe,
                **{k: v for k, v in settings.items() if k in _run_keys()},
            )  # fmt: skip
            trainer = Trainer(config, Log(), loaded=self.loaded())
            trainer.setup()
            report = trainer.train()
            seconds = report.cache_seconds + report.train_seconds
            temperature = getattr(report, "temperature", None) or getattr(trainer, "temperature", 1.0)
            readout = getattr(trainer, "readout", None)  # its temperature and lexical model (lexical.py)
            if readout is not None:
                extra: dict[str, Any] = {"readout": readout}
            else:  # older checkouts
                extra = {"temperature": temperature} if _accepts(score_items, "temperature") else {}
            probs: list[list[float] | None] = [None] * len(test)
            for req in dict.fromkeys(r.get("requirement") for r in test):
                idx = [i for i, r in enumerate(test) if r.get("requirement") == req]
                scores = score_items(trainer.peft, trainer.fmt, [test[i]["item"] for i in idx], req, **extra)
                for i, s in zip(idx, scores, strict=True):
                    probs[i] = [s.probs[lab] for lab in trainer.fmt.labels]
            self._dump(name, digest, label, trainer, test, score_items)
            result = baselines.summarise(
                [r["label"] for r in test], probs, list(trainer.fmt.labels), seconds,
                chosen={**overrides, "epochs_run": len(report.epochs), "best_epoch": report.best_epoch,
                        "temperature": temperature, "val_accuracy": report.metrics.accuracy,
                        "lexical": getattr(report, "lexical", None)},
            )  # fmt: skip
        self._loaded = None  # the Trainer wrapped the model: load a fresh one for the next set
        _write_json(self._key(name, digest, "validora", label), result)
        return result

    def _dump(self, name: str, digest: str, label: str, trainer: Any, test: list, score_items: Any) -> None:
        """The adapter's raw label log-likelihoods (validation and test) and every split's texts, so
        that readout variants (lexical.py) are measured without training again: benchmarks/readouts.py."""
        from validora.score.lexical import lexical_text
        from validora.score.readout import Readout

        _, _, val_loglik = trainer.evaluate()
        raw: list[list[float] | None] = [None] * len(test)
        for req in dict.fromkeys(r.get("requirement") for r in test):
            idx = [i for i, r in enumerate(test) if r.get("requirement") == req]
            items = [test[i]["item"] for i in idx]
            for i, s in zip(
                idx, score_items(trainer.peft, trainer.fmt, items, req, readout=Readout(1.0)), strict=True
            ):
                raw[i] = [s.probs[lab] for lab in trainer.fmt.labels]  # softmax of the log-likelihoods
        pairs = {
            split: [[lexical_text(e.item, e.requirement), e.label] for e in examples]
            for split, examples in (("train", trainer.train_examples), ("val", trainer.val_examples))
        }
        pairs["test"] = [[lexical_text(r["item"], r.get("requirement")), r["label"]] for r in test]
        folder = cache_root() / "quality" / "dumps"
        folder.mkdir(parents=True, exist_ok=True)
        dump = {"labels": list(trainer.fmt.labels), "temperature": trainer.report.temperature,
                "val_loglik": val_loglik.tolist(), "test_probs_t1": raw, **pairs}  # fmt: skip
        _write_json(folder / f"{name}-{digest}-{label}.json", dump)

    def cached_variant(self, name: str, digest: str, label: str) -> dict[str, Any] | None:
        path = self._key(name, digest, "validora", label)
        return json.loads(path.read_text()) if path.is_file() else None


def _accepts(fn: Any, param: str) -> bool:
    return param in inspect.signature(fn).parameters


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def table(results: dict[str, dict[str, dict[str, Any]]], columns: Sequence[str]) -> str:
    """Markdown: one row per set, per column accuracy / macro-F1 / ECE / seconds; an average row last."""
    head = "| set | n train / test | " + " | ".join(f"{c}: acc / F1 / ECE / s" for c in columns) + " |"
    lines = [head, "|---|---|" + "---|" * len(columns)]
    sums: dict[str, list[dict[str, Any]]] = {c: [] for c in columns}
    for name, row in results.items():
        cells = []
        for c in columns:
            r = row.get(c)
            if r is None:
                cells.append("–")
                continue
            sums[c].append(r)
            cells.append(f"{r['accuracy']:.3f} / {r['macro_f1']:.3f} / {r['ece']:.3f} / {r['seconds']:.0f}")
        sizes = row.get("_sizes", {})
        lines.append(
            f"| {name} | {sizes.get('train', '?')} / {sizes.get('test', '?')} | " + " | ".join(cells) + " |"
        )
    avg = []
    for c in columns:
        rs = sums[c]
        if len(rs) != len(results) or not rs:
            avg.append(f"({len(rs)} of {len(results)} sets)" if rs else "–")
            continue
        mean = {k: sum(r[k] for r in rs) / len(rs) for k in ("accuracy", "macro_f1", "ece", "seconds")}
        avg.append(
            f"**{mean['accuracy']:.3f}** / {mean['macro_f1']:.3f} / {mean['ece']:.3f} / {mean['seconds']:.0f}"
        )
    lines.append("| **average** | | " + " | ".join(avg) + " |")
    return "\n".join(lines)


def gaps(results: dict[str, dict[str, dict[str, Any]]], label: str) -> str:
    """The issue's targets per set: `label`'s test accuracy minus max(TF-IDF, probe), and minus SetFit."""
    lines = [f"| set | {label} − max(tfidf, probe) | {label} − setfit |", "|---|---|---|"]
    diffs: list[list[float]] = [[], []]
    for name, row in results.items():
        if label not in row:
            continue
        acc = row[label]["accuracy"]
        cells = []
        for k, others in enumerate((("tfidf", "probe"), ("setfit",))):
            if all(o in row for o in others):
                d = acc - max(row[o]["accuracy"] for o in others)
                diffs[k].append(d)
                cells.append(f"{d:+.3f}")
            else:
                cells.append("–")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    means = [f"{sum(d) / len(d):+.3f} ({len(d)} sets)" if d else "–" for d in diffs]
    lines.append(f"| **average** | {means[0]} | {means[1]} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sets", default=",".join(BUILDERS), help=f"comma-separated, of {', '.join(BUILDERS)}"
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a Recipe (or run option) override for the validora column (repeatable)")  # fmt: skip
    parser.add_argument("--label", default="validora", help="the column name of this validora variant")
    parser.add_argument("--also", default="", help="earlier validora variants (labels) to show beside it")
    parser.add_argument("--basemodel", help="base model for the validora column and the probe")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and of every method")
    parser.add_argument("--cached-baselines", action="store_true",
                        help="show tfidf / probe / setfit only where a cached result exists; train none")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every result (probabilities included) here")
    args = parser.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [s for s in sets if s not in BUILDERS] + [m for m in methods if m not in METHODS]
    if bad:
        parser.error(f"unknown set or method: {', '.join(bad)}")
    overrides = parse_overrides(args.overrides)
    also = [a.strip() for a in args.also.split(",") if a.strip()]
    suite = Suite(args.basemodel, args.seed)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for name in sets:
        (train, test), folder = load_set(name, args.seed)
        digest = split_hash(train, test)
        row: dict[str, Any] = {"_sizes": {"train": len(train), "test": len(test), "split": digest}}
        results[name] = row
        for method in methods:
            print(f"== {name} ({len(train)} / {len(test)}, split {digest}): {method}", flush=True)
            if method == "validora":
                row[args.label] = suite.validora(name, folder, test, digest, overrides, args.label)
            elif (found := suite.baseline(name, method, train, test, digest, args.cached_baselines)) is None:
                print("   not cached: skipped (--cached-baselines)", flush=True)
                continue
            else:
                row[method] = found
            r = row[args.label if method == "validora" else method]
            print(f"   accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f}, ECE {r['ece']:.3f}, "
                  f"{r['seconds']:.0f} s, chosen {r.get('chosen')}", flush=True)  # fmt: skip
        for label in also:
            if (cached := suite.cached_variant(name, digest, label)) is not None:
                row[label] = cached
    columns = [m for m in methods if m != "validora"] + also + ([args.label] if "validora" in methods else [])
    print(f"\n## Quality suite (seed {args.seed}; {platform.machine()}, {os.cpu_count()} CPU cores; "
          f"{time.perf_counter() - started:.0f} s; `{' '.join(sys.argv)}`)\n")  # fmt: skip
    print(table(results, columns))
    if "validora" in methods or also:
        print("\n" + gaps(results, args.label if "validora" in methods else also[-1]))
    if args.json:
        args.json.write_text(
            json.dumps({"argv": sys.argv, "overrides": overrides, "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()
