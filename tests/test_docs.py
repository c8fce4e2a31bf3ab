"""Executable docs: the README's ```python blocks and examples/triage.py run against a real adapter.

```py blocks need a real Hub repository and are not run; tests/adapter/test_hub.py covers what they show.
"""

import os
import re
import subprocess
import sys

from validora.llamacpp.serving import serve

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


def readme_commands() -> list[list[str]]:
    """Every `m alora ...` command in the README's ```bash blocks, continuation lines joined, as argv."""
    import shlex

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("m alora "):
                commands.append(shlex.split(line)[2:])
    return commands


def test_readme_commands_name_real_subcommands_and_options():
    """A renamed or removed flag must not survive in the README: each shown option is parsed by click."""
    import typer

    from validora.cli import app

    group = typer.main.get_command(app).commands["alora"]
    commands = readme_commands()
    shown = {argv[0] for argv in commands}
    assert {"train", "eval", "predict", "upload", "import", "serve"} <= shown
    for argv in commands:
        command = group.commands.get(argv[0])
        assert command is not None, f"README shows an unknown subcommand: m alora {' '.join(argv)}"
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        used = {arg.split("=", 1)[0] for arg in argv[1:] if arg.startswith("--")}
        assert used <= known, f"m alora {' '.join(argv)}: unknown {sorted(used - known)}"


def test_readme_grammar_table_is_the_codes():
    """The README's requirement grammar table is `grammar_table()`, and its refused examples are refused."""
    from validora.errors import RequirementError
    from validora.programs.grammar import EXAMPLE_LABELS, grammar_table
    from validora.programs.requirements import req

    readme = (ROOT / "README.md").read_text()
    assert grammar_table() in readme, "README: paste validora.programs.grammar.grammar_table() output"
    section = readme.split("### Requirement grammar", 1)[1].split("\n## ", 1)[0]
    refused = re.search(r"Refused, with a `RequirementError`.*?```text\n(.*?)```", section, re.DOTALL)
    assert refused
    for line in refused.group(1).splitlines():
        text, _, why = line.partition("   ")
        if text.startswith("accept="):
            continue
        labels = ["yes", "no"] if "(labels: yes, no)" in why else EXAMPLE_LABELS
        try:
            req(text.strip()).passing_labels(labels)
        except RequirementError:
            continue
        raise AssertionError(f"README shows {text.strip()!r} as refused, but it is read")
