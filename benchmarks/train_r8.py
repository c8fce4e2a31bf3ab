"""Reuters R8 training benchmark: validora aLoRA (prefix-cached), LoRA, aLoRA without the cache, TF-IDF + LR.

All variants run side by side in one process on the same seeded 400/400 subsets (items cut to their
first 60 words), so their times and scores are comparable. Prints a Markdown table for BENCHMARKS.md.

    .venv/bin/python benchmarks/train_r8.py                 # everything (about 30 min on 2 CPU cores)
    .venv/bin/python benchmarks/train_r8.py --only alora    # just the headline run
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from quality import Log  # one progress printer for the benchmarks
from r8_data import r8_subsets, tfidf_logreg_baseline, write_jsonl

from validora.core.metrics import classification_metrics
from validora.core.models import load_base_model
from validora.score.scoring import score_items
from validora.train.trainer import Recipe, TrainConfig, Trainer


def run(name: str, train_file: Path, test: list[dict], **overrides: Any) -> dict[str, Any]:
    """Train one variant, then score the test subset with the in-memory adapter."""
    print(f"== {name}: {overrides}", flush=True)
    config = TrainConfig(
        datafile=str(train_file), outfile=str(train_file.parent / "unused"), device="cpu",
        recipe=Recipe(**overrides),
    )  # fmt: skip
    trainer = Trainer(config, Log(), loaded=load_base_model(None, device="cpu"))
    setup_start = time.perf_counter()
    trainer.setup()
    setup_seconds = time.perf_counter() - setup_start - trainer.cache_seconds  # model load, encoding
    report = trainer.train()
    wall = report.cache_seconds + report.train_seconds
    started = time.perf_counter()
    scores = score_items(trainer.peft, trainer.fmt, [r["item"] for r in test])
    test_seconds = time.perf_counter() - started
    metrics = classification_metrics(
        [r["label"] for r in test], [s.label for s in scores], trainer.fmt.labels
    )
    result = {
        "name": name,
        "epochs": len(report.epochs),
        "wall": wall,
        "cache": report.cache_seconds,
        "setup": setup_seconds,
        "ex_per_s": report.n_train * len(report.epochs) / wall,
        "accuracy": metrics.accuracy,
        "macro_f1": metrics.macro_f1,
        "val_accuracy": report.metrics.accuracy,
        "best_epoch": report.best_epoch,
        "losses": [e.train_loss for e in report.epochs],
        "epoch_seconds": [e.seconds for e in report.epochs],
        "test_seconds": test_seconds,
    }
    print(f"  -> {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's update budget")
    parser.add_argument("--nocache-epochs", type=int, default=2, help="epochs of the slow no-cache aLoRA run")
    parser.add_argument("--only", choices=["alora", "lora", "nocache", "reference", "tfidf"], action="append")
    parser.add_argument(
        "--reference-defaults", action="store_true", help="also run aLoRA with lr 6e-6, batch 2, grad-accum 4"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, help="override the training default for every variant")
    parser.add_argument("--batch-size", type=int, help="override the training default for every variant")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    want = set(
        args.only
        or ["alora", "lora", "nocache", "tfidf"] + (["reference"] if args.reference_defaults else [])
    )

    train, test = r8_subsets(n_train=400, n_test=400, words=60, seed=args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="validora-r8-"))
    train_file = tmp / "r8_train.jsonl"
    write_jsonl(train, train_file)
    results: dict[str, dict[str, Any]] = {}
    common: dict[str, Any] = {"epochs": args.epochs, "seed": args.seed}
    tuned = {k: v for k, v in (("learning_rate", args.learning_rate), ("batch_size", args.batch_size)) if v}
    common.update(tuned)
    if "tfidf" in want:
        results["tfidf"] = tfidf_logreg_baseline(train, test)
        print(f"== TF-IDF + LR: {results['tfidf']}", flush=True)
    if "alora" in want:
        results["alora"] = run("aLoRA, prefix cache", train_file, test, adapter="alora", **common)
    if "nocache" in want:
        # The same number of epochs both ways: the LR schedule depends on the total, so the first epochs
        # of a 6-epoch run are not the same training as a 2-epoch run.
        short = {"epochs": args.nocache_epochs, "seed": args.seed, **tuned}
        results["alora_short"] = run("aLoRA, prefix cache", train_file, test, adapter="alora", **short)
        results["nocache"] = run(
            "aLoRA, no prefix cache", train_file, test, adapter="alora", prefix_cache=False, **short
        )
    if "lora" in want:
        results["lora"] = run("LoRA", train_file, test, adapter="lora", **common)
    if "reference" in want:
        results["reference"] = run(
            "aLoRA, reference defaults", train_file, test, adapter="alora", learning_rate=6e-6, batch_size=2,
            grad_accum=4, **common,
        )  # fmt: skip
    report(results, args)


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n## Reuters R8 (400 train / 400 test, first 60 words, seed {args.seed})\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.processor() or platform.platform()}; "
          f"torch {torch.__version__}; command: `{' '.join(sys.argv)}`\n")  # fmt: skip
    print("| variant | epochs | wall time (s) | examples/s | test accuracy | test macro-F1 |")
    print("|---|---|---|---|---|---|")
    for key in ("alora", "lora", "reference", "alora_short", "nocache"):
        if key in results:
            r = results[key]
            print(
                f"| {r['name']} | {r['epochs']} | {r['wall']:.0f} | {r['ex_per_s']:.1f} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} |"
            )
    if "tfidf" in results:
        t = results["tfidf"]
        print(
            f"| TF-IDF + logistic regression | – | {t['seconds']:.1f} | – | {t['accuracy']:.3f} | {t['macro_f1']:.3f} |"
        )
    cached = results.get("alora_short")
    if cached and "nocache" in results:
        n = results["nocache"]["epochs"]
        slow, fast = results["nocache"]["wall"], cached["wall"]
        pairs = zip(cached["losses"], results["nocache"]["losses"], strict=True)
        diff = max(abs(a - b) / abs(b) for a, b in pairs)
        print(f"\nPrefix cache, {n} epochs each: {fast:.0f} s with the cache vs {slow:.0f} s without "
              f"(**{slow / fast:.1f}x faster**); train losses {[round(x, 5) for x in cached['losses']]} vs "
              f"{[round(x, 5) for x in results['nocache']['losses']]} (largest relative difference {diff:.1e}).")  # fmt: skip
    for key in ("alora", "lora"):
        if key in results:
            r = results[key]
            print(f"{r['name']}: per-epoch seconds {[round(s) for s in r['epoch_seconds']]}, "
                  f"prefix caching {r['cache']:.0f} s, model load {r['setup']:.0f} s (not in wall time), "
                  f"test scoring {r['test_seconds']:.0f} s, kept epoch {r['best_epoch']}.")  # fmt: skip


if __name__ == "__main__":
    main()
