"""Validation latency: shared-prefix aLoRA checks vs per-check recomputation, LoRA, and the base-model judge.

Outputs of about 64, 256 and 1024 tokens; k = 1, 4, 16 checks spread over 1 and 4 aLoRA adapters.
Adapters are randomly initialised (their weights do not change the cost). Medians of --repeats runs,
all measured side by side in one process.

    .venv/bin/python benchmarks/validate_latency.py [--repeats 3] [--lengths 64 256 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from peft import LoraConfig, get_peft_model

from validora import CustomIntrinsicAdapter, LocalHFBackend
from validora.adapters import AdapterInfo
from validora.models import load_base_model
from validora.prompting import PromptFormat
from validora.scoring import prefill

LABELS = ["piston_rings", "connecting_rod", "mini_carburetor", "no_failure"]
NOTES = Path(__file__).resolve().parent.parent / "examples" / "engine_failures.jsonl"


def make_adapters(root: Path, n: int, alora: bool) -> list[Path]:
    """n random adapters in validora's directory format."""
    paths = []
    for i in range(n):
        loaded = load_base_model(None, device="cpu")
        fmt = PromptFormat(loaded.tokenizer, LABELS)
        torch.manual_seed(i)
        config = LoraConfig(
            r=32, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj"], task_type="CAUSAL_LM",
            init_lora_weights=False, alora_invocation_tokens=fmt.invocation_ids if alora else None,
        )  # fmt: skip
        path = root / f"{'alora' if alora else 'lora'}{i}"
        get_peft_model(loaded.model, config).save_pretrained(str(path))
        info = AdapterInfo("alora" if alora else "lora", "smollm2-135m-instruct", LABELS, fmt.describe())
        (path / "validora.json").write_text(info.to_json())
        paths.append(path)
    return paths


def output_of(tokens: int, tokenizer) -> str:
    notes = [json.loads(line)["item"] for line in NOTES.read_text().splitlines()]
    text, i = "", 0
    while len(tokenizer(text)["input_ids"]) < tokens:
        text += notes[i % len(notes)] + " "
        i += 1
    ids = tokenizer(text)["input_ids"][:tokens]
    return tokenizer.decode(ids)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="validora-latency-"))
    backend = LocalHFBackend(device="cpu")
    alora = [CustomIntrinsicAdapter(str(p)) for p in make_adapters(root, 4, alora=True)]
    lora = [CustomIntrinsicAdapter(str(p)) for p in make_adapters(root, 4, alora=False)]
    for a in [*alora, *lora]:
        backend.add_adapter(a)
    model, tok = backend._model, backend.tokenizer

    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores; torch {torch.__version__}; "
          f"command: `{' '.join(sys.argv)}`\n")  # fmt: skip
    print(
        "| output tokens | k | adapters | prefill | (a) shared | (b) per-check | (c) LoRA | (d) base judge | a / prefill | b / a |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for length in args.lengths:
        output = output_of(length, tok)
        ids = PromptFormat(tok, LABELS).encode(output).prefix
        prefill_ms = median_ms(lambda ids=ids: prefill(model, [ids], tok.pad_token_id), args.repeats)
        for k in args.ks:
            for n_adapters in (1, 4):
                names = [alora[i % n_adapters].name for i in range(k)]
                checks = [(name, f"Requirement number {i}.") for i, name in enumerate(names)]
                shared = median_ms(lambda c=checks, o=output: backend.check(o, c), args.repeats)
                per_check = median_ms(
                    lambda c=checks, o=output: [backend.check(o, [x]) for x in c], args.repeats
                )
                lora_checks = [(lora[i % n_adapters].name, r) for i, (_, r) in enumerate(checks)]
                lora_ms = median_ms(lambda c=lora_checks, o=output: backend.check(o, c), args.repeats)
                judge = [(None, r) for _, r in checks]
                judge_ms = median_ms(lambda c=judge, o=output: backend.check(o, c), args.repeats)
                print(f"| {length} | {k} | {n_adapters} | {prefill_ms:.0f} | {shared:.0f} | {per_check:.0f} | "
                      f"{lora_ms:.0f} | {judge_ms:.0f} | {shared / prefill_ms:.2f} | {per_check / shared:.1f} |",
                      flush=True)  # fmt: skip
    print("\nAll times are medians in ms. (a) every check of the output over one shared prefix; (b) the same aLoRA "
          "checks, each computing the output again; (c) LoRA adapters (full path); (d) the base model as yes/no judge.")  # fmt: skip


if __name__ == "__main__":
    main()
