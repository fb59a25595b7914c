"""README.md works as written: its ```bash and ```python blocks run, in order, in a fresh copy of the checkout.

A command is not run where its comment says ``not run by tests: <why>`` (installs, the test suite itself,
full schedules, GPUs, several machines, timings); a comment line saying so before a block's first command
leaves the whole block out. Everything else runs in a copy of the tracked files, with ``bnnctl`` and
``python3`` this interpreter and this checkout, and MNIST where the README tells users to put it (``./data``),
copied from ``BNNCTL_TEST_MNIST``. Any command that fails fails the test, and so does any file the commands
leave that ``git status`` would show (a changed tracked file, or a new one that .gitignore does not cover).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MNIST = os.environ.get("BNNCTL_TEST_MNIST")
NOT_RUN = "not run by tests:"
_FENCE = re.compile(r"^```(\S*)\s*$")
RUNNABLE = ("bash", "python")


@dataclass
class Command:
    text: str  # a shell command (continuation lines joined) or a whole Python block
    language: str  # "bash" or "python"
    line: int  # where it starts in the README, 1-based
    skip: str | None = None  # why it is not run

    def describe(self) -> str:
        return f"README.md line {self.line}: {self.text if self.language == 'bash' else 'the python block'}"


def _not_run_reason(text: str) -> str | None:
    """The reason in a ``not run by tests: <why>`` comment, or None."""
    _, marker, reason = text.partition(NOT_RUN)
    if not marker:
        return None
    reason = reason.strip()
    if reason.endswith(")") and reason.count(")") > reason.count("("):  # "(not run by tests: why)"
        reason = reason[:-1].strip()
    return reason or "no reason given"


def _bash_commands(body: list[str], first_line: int) -> list[Command]:
    commands: list[Command] = []
    block_skip: str | None = None
    pending: list[str] = []
    for number, line in enumerate(body, first_line):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            if not commands and _not_run_reason(stripped):
                block_skip = _not_run_reason(stripped)
            continue
        if not pending:
            start = number
        pending.append(line)
        if stripped.endswith("\\"):
            continue
        text = "\n".join(pending)
        pending = []
        commands.append(Command(text, "bash", start, block_skip or _not_run_reason(text)))
    return commands


def readme_commands(markdown: str) -> list[Command]:
    """Every command of the markdown's ```bash blocks and every ```python block, in order."""
    lines = markdown.splitlines()
    commands: list[Command] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        body, language = lines[i + 1:end], fence.group(1)
        if language == "bash":
            commands += _bash_commands(body, i + 2)
        elif language == "python":
            first = next((line for line in body if line.strip()), "")
            skip = _not_run_reason(first) if first.lstrip().startswith("#") else None
            commands.append(Command("\n".join(body), "python", i + 2, skip))
        i = end + 1
    return commands


class CommandFailed(AssertionError):
    pass


def run_commands(commands: list[Command], cwd: Path, env: dict[str, str], timeout: float = 900) -> int:
    """Run the commands not marked, in order, in cwd, printing each one's wall time; returns how many ran. A
    failing one raises CommandFailed."""
    ran = 0
    for command in commands:
        if command.skip:
            continue
        argv = (["bash", "-e", "-o", "pipefail", "-c", command.text] if command.language == "bash"
                else [sys.executable, "-c", command.text])
        started = time.monotonic()
        try:
            done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CommandFailed(f"{command.describe()} ran past {timeout:.0f} s") from None
        if done.returncode != 0:
            output = (done.stdout + done.stderr)[-3000:]
            raise CommandFailed(f"{command.describe()} exited {done.returncode}:\n{output}")
        print(f"{time.monotonic() - started:7.1f} s  {command.describe()}")
        ran += 1
    return ran


# ---------------------------------------------------------------------------- the parser and runner themselves

SAMPLE = """
Text with `bnnctl inline` code, which is not run.

```bash
echo one > one.txt          # a comment
echo two \\
  >> one.txt
pip install nothing          # (not run by tests: it installs)
```

```bash
# not run by tests: a GPU
echo three
echo four
```

```yaml
key: value
```

```python
print("five")
```
"""


def test_the_parser_takes_bash_commands_and_python_blocks_in_order_with_their_reasons_to_skip():
    commands = readme_commands(SAMPLE)
    assert [(c.language, c.line, c.skip) for c in commands] == [
        ("bash", 5, None), ("bash", 6, None), ("bash", 8, "it installs"),
        ("bash", 13, "a GPU"), ("bash", 14, "a GPU"), ("python", 22, None)]
    assert commands[1].text == "echo two \\\n  >> one.txt"


def test_the_runner_runs_what_is_not_marked_and_fails_on_the_first_failing_command(tmp_path):
    commands = readme_commands(SAMPLE)
    assert run_commands(commands, tmp_path, dict(os.environ)) == 3
    assert (tmp_path / "one.txt").read_text() == "one\ntwo\n"
    failing = readme_commands("```bash\necho fine\nfalse\necho never > never.txt\n```\n")
    with pytest.raises(CommandFailed, match=r"README.md line 3: false exited 1"):
        run_commands(failing, tmp_path, dict(os.environ))
    assert not (tmp_path / "never.txt").exists()
    with pytest.raises(CommandFailed, match="the python block exited 1"):
        run_commands(readme_commands("```python\nraise SystemExit(1)\n```\n"), tmp_path, dict(os.environ))


def test_every_readme_command_not_run_says_why():
    commands = readme_commands((REPO / "README.md").read_text())
    assert commands and all(c.skip is None or c.skip.strip() for c in commands)
    assert any(c.skip is None for c in commands)


def test_every_entry_of_the_quick_subset_the_readme_names_exists():
    from tests.conftest import QUICK
    for entry in QUICK:
        path, _, prefix = entry.partition("::")
        assert (REPO / path).is_file(), entry
        assert not prefix or f"def {prefix}" in (REPO / path).read_text(), entry


# ---------------------------------------------------------------------------- the README itself

def _fresh_copy(destination: Path) -> None:
    """The checkout's files that git does not ignore (what a clone has once they are committed), as this working
    tree has them, and a git index of them."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True)
    for name in listed.stdout.decode().split("\0"):
        source = REPO / name
        if name and source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    subprocess.run(["git", "init", "-q"], cwd=destination, check=True)
    subprocess.run(["git", "add", "-A"], cwd=destination, check=True)


def _shims(folder: Path) -> None:
    """``bnnctl`` and ``python3`` as this interpreter, whatever is installed on the machine."""
    folder.mkdir()
    for name, target in (("bnnctl", f'"{sys.executable}" -m bnnctl'), ("python3", f'"{sys.executable}"')):
        (folder / name).write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        (folder / name).chmod(0o755)


@pytest.mark.slow
@pytest.mark.skipif(not MNIST or not (Path(MNIST) / "MNIST" / "raw").is_dir(),
                    reason="set BNNCTL_TEST_MNIST to a folder holding MNIST/raw/*.gz: the README's commands train on it")
@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                    reason="needs git and a git checkout (the copy is made of the tracked files)")
def test_the_readme_runs_as_written_and_leaves_git_status_clean(tmp_path):
    clone = tmp_path / "clone"
    _fresh_copy(clone)
    # where the README tells users to put MNIST; copied, so a read-only shared folder works
    shutil.copytree(Path(MNIST) / "MNIST" / "raw", clone / "data" / "MNIST" / "raw")
    _shims(tmp_path / "bin")
    env = {k: v for k, v in os.environ.items() if k not in ("BNNCTL_DATA", "PYTHONPATH")}
    env.update(PATH=f"{tmp_path / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(clone))

    commands = readme_commands((clone / "README.md").read_text())
    skipped = [c for c in commands if c.skip]
    ran = run_commands(commands, clone, env)
    print(f"README.md: ran {ran} commands, skipped {len(skipped)}:")
    for c in skipped:
        print(f"  line {c.line} ({c.skip}): {c.text.splitlines()[0]}")
    assert ran >= 10

    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    # the index holds the copy as it was, so a second column other than blank is a change the commands made
    changed = [line for line in status if line[1] != " "]
    assert not changed, f"the README's commands leave files git status shows: {changed}"
    assert (clone / "runs" / "mnist_torch7" / "first" / "model.bnnx").is_file()
