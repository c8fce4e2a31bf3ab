"""The reference program: a triage summary that must name a failure mode, judged by the demo adapter.

Run `make demo` first (it trains checkpoints/engine_alora), then:  .venv/bin/python examples/triage.py
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no per-file loading bars in the output
warnings.filterwarnings("ignore", category=FutureWarning)

from validora import ChatContext, CustomIntrinsicAdapter, LocalHFBackend, Session, req  # noqa: E402

ADAPTER = Path(sys.argv[1] if len(sys.argv) > 1 else "checkpoints/engine_alora")


def main() -> None:
    started = time.perf_counter()
    backend = LocalHFBackend(model_id="smollm2-135m-instruct", device="auto")
    adapter = CustomIntrinsicAdapter(model_id=str(ADAPTER), base_model_name="smollm2-135m-instruct")
    backend.add_adapter(adapter)
    print(f"Loaded the base model and {adapter} in {time.perf_counter() - started:.1f} s\n")

    m = Session(backend, ctx=ChatContext())
    result = m.instruct(
        "Write a triage summary based on this technician note: {{note}}",
        user_variables={"note": "High vibration at 3100 RPM, connecting rod suspected."},
        requirements=[req("The failure mode must not be 'no_failure'.")],
        model_options={"max_new_tokens": 80},
        return_sampling_results=True,
    )
    print(f"Result ({'all requirements met' if result.success else 'requirements NOT met'}):\n{result}\n")
    for n, (output, validations) in enumerate(
        zip(result.sample_generations, result.sample_validations, strict=True), 1
    ):
        print(
            f"Attempt {n}: {output.generation_seconds:.2f} s generating, {output.validation_seconds:.3f} s validating"
        )
        for v in validations:
            probs = ", ".join(
                f"{label} {p:.3f}" for label, p in sorted(v.probs.items(), key=lambda kv: -kv[1])
            )
            print(f"  {'PASS' if v.passed else 'FAIL'}  {v.requirement}\n        {v.reason}\n        {probs}")

    backend.default_to_constraint_checking_alora = False  # the same check by the base model alone
    (judged,) = m.validate([req("The summary names a likely failed engine part.")])
    print(
        f"\nWithout the adapter (base-model yes/no judge): {'PASS' if judged.passed else 'FAIL'} - {judged.reason}"
    )


if __name__ == "__main__":
    main()
