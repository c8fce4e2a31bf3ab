"""Executable docs: the README's ```python blocks and examples/triage.py run against a real adapter.

```py blocks need a real Hub repository and are not run; tests/test_hub.py covers what they show.
"""

import os
import re
import subprocess
import sys

from validora.serve import serve

from .conftest import ROOT


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)


def test_readme_python_blocks_run(trained_adapter, llama_server, capsys):
    blocks = python_blocks()
    assert len(blocks) >= 3
    served = [b for b in blocks if "LlamaCppBackend(" in b]
    assert served  # the serving section's program runs against a real llama-server
    with serve([trained_adapter], threads=1) as serving:
        for block in blocks:
            code = block.replace("checkpoints/engine_alora", str(trained_adapter))
            code = code.replace("http://127.0.0.1:8080", serving.url)
            exec(compile(code, "README.md", "exec"), {})
            printed = capsys.readouterr().out
            if "print(" in block:
                assert "no_failure" in printed, block  # label probabilities were printed


def test_triage_example_runs(trained_adapter):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "triage.py"), str(trained_adapter)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Result (" in out and "Attempt 1:" in out and "s generating" in out and "s validating" in out
    assert "The failure mode must not be 'no_failure'." in out
    assert re.search(r"no_failure [01]\.\d{3}", out)  # every label's probability is printed
    assert "Without the adapter (base-model yes/no judge)" in out
