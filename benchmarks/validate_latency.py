"""Validation latency: shared-prefix aLoRA checks vs per-check recomputation, LoRA, and the base-model judge.

Outputs of about 64, 256 and 1024 tokens; k = 1, 4, 16 checks spread over 1 and 4 aLoRA adapters.
Adapters are randomly initialised (their weights do not change the cost). Medians of --repeats runs,
all measured side by side in one process, in turns.

    .venv/bin/python benchmarks/validate_latency.py [--repeats 3] [--lengths 64 256 1024] [--shared-only]
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
from validora.adapter.schema import AdapterInfo
from validora.core.models import load_base_model
from validora.core.prompting import PromptFormat
from validora.score.scoring import prefill

LABELS = ["piston_rings", "connecting_rod", "mini_carburetor", "no_failure"]
NOTES = Path(__file__).resolve().parent.parent / "examples" / "engine_failures.jsonl"


def make_adapters(root: Path, n: int, alora: bool, labels: list[str] = LABELS) -> list[Path]:
    """n random adapters in validora's directory format."""
    paths = []
    kind = "alora" if alora else "lora"
    for i in range(n):
        loaded = load_base_model(None, device="cpu")
        fmt = PromptFormat(loaded.tokenizer, labels)
        torch.manual_seed(i)
        config = LoraConfig(
            r=32, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj"], task_type="CAUSAL_LM",
            init_lora_weights=False, alora_invocation_tokens=fmt.invocation_ids if alora else None,
        )  # fmt: skip
        path = root / f"{kind}{len(labels)}-{i}"
        get_peft_model(loaded.model, config).save_pretrained(str(path))
        # trained with requirement texts, so that k requirements are k different prompts
        info = AdapterInfo(kind, "smollm2-135m-instruct", labels, fmt.describe(), requirements=True)
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


def medians_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median time of each function, run in turns so that a slower minute of a shared machine hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--shared-only", action="store_true", help="only the plain prefill and (a): skip the slow comparisons"
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="validora-latency-"))
    backend = LocalHFBackend(device="cpu")
    alora = [CustomIntrinsicAdapter(str(p)) for p in make_adapters(root, 4, alora=True)]
    lora = [CustomIntrinsicAdapter(str(p)) for p in make_adapters(root, 4, alora=False)]
    yes_no = CustomIntrinsicAdapter(str(make_adapters(root, 1, alora=True, labels=["yes", "no"])[0]))
    for a in [*alora, *lora, yes_no]:
        backend.add_adapter(a)
    model, tok = backend._model, backend.tokenizer

    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores; torch {torch.__version__}; "
          f"command: `{' '.join(sys.argv)}`\n")  # fmt: skip
    print("| output tokens | k | adapters | prefill | (a) shared | (b) per-check | (c) LoRA | (d) base judge "
          "| a / prefill | b / a | (a − prefill) / k | yes/no: (a − prefill) / k |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    warm = output_of(16, tok)
    backend.check(warm, [(alora[0].name, "x"), (lora[0].name, "x"), (None, "x"), (yes_no.name, "x")])
    for length in args.lengths:
        output = output_of(length, tok)
        ids = PromptFormat(tok, LABELS).encode(output).prefix
        for k in args.ks:
            requirements = [f"Requirement number {i}." for i in range(k)]
            short = [(yes_no.name, r) for r in requirements]
            for n_adapters in (1, 4):
                checks = [(alora[i % n_adapters].name, r) for i, r in enumerate(requirements)]
                lora_checks = [(lora[i % n_adapters].name, r) for i, r in enumerate(requirements)]
                judge = [(None, r) for r in requirements]
                fns: dict[str, Callable[[], object]] = {
                    "prefill": lambda ids=ids: prefill(model, [ids], tok.pad_token_id),
                    "shared": lambda c=checks, o=output: backend.check(o, c),
                }
                if n_adapters == 1:
                    fns["short"] = lambda c=short, o=output: backend.check(o, c)
                if not args.shared_only:
                    fns["per_check"] = lambda c=checks, o=output: [backend.check(o, [x]) for x in c]
                    fns["lora"] = lambda c=lora_checks, o=output: backend.check(o, c)
                    fns["judge"] = lambda c=judge, o=output: backend.check(o, c)
                m = {
                    "short": nan,
                    "per_check": nan,
                    "lora": nan,
                    "judge": nan,
                    **medians_ms(fns, args.repeats),
                }
                short_cell = "" if n_adapters > 1 else f"{(m['short'] - m['prefill']) / k:.0f}"
                print(f"| {length} | {k} | {n_adapters} | {m['prefill']:.0f} | {m['shared']:.0f} | "
                      f"{m['per_check']:.0f} | {m['lora']:.0f} | {m['judge']:.0f} | "
                      f"{m['shared'] / m['prefill']:.2f} | {m['per_check'] / m['shared']:.1f} | "
                      f"{(m['shared'] - m['prefill']) / k:.0f} | {short_cell} |", flush=True)  # fmt: skip
    print("\nAll times are medians in ms. (a) every check of the output over one shared prefix; (b) the same aLoRA "
          "checks, each computing the output again; (c) LoRA adapters (full path); (d) the base model as yes/no "
          "judge. Adapters have the four engine labels (3-5 tokens each) except in the last column, where one "
          "aLoRA adapter has the labels yes/no.")  # fmt: skip


if __name__ == "__main__":
    main()
