"""The README holds what the code does: its usage blocks list exactly the flags of each
command's --help, and each of its Python examples runs."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tflrewrite.cli import COMMANDS, DEFAULT

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

# A flag in a usage line: a dash not inside a word (ethos-u, N:M and 1xB are no flags).
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def fenced(language: str) -> list[str]:
    """The README's fenced blocks of `language` ("" for plain ```), fences at column 0."""
    blocks, current, lang = [], None, None
    for line in README.splitlines(keepends=True):
        if current is None and line.startswith("```"):
            current, lang = [], line[3:].strip()
        elif current is not None and line.rstrip("\n") == "```":
            if lang == language:
                blocks.append("".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def usage_entries() -> dict[str, str]:
    """Each command's usage in the README's plain blocks that start with `tflrewrite `: a
    line that starts with `tflrewrite` and the indented lines after it."""
    entries: dict[str, str] = {}
    for block in fenced(""):
        if not block.startswith("tflrewrite "):
            continue
        command = None
        for line in block.splitlines():
            if line.startswith("tflrewrite "):
                word = line.split()[1]
                command = word if word in COMMANDS else "rewrite"
                assert command not in entries, f"two usage entries for {command}"
                entries[command] = line
            elif line.startswith(" ") and command is not None:
                entries[command] += "\n" + line
    return entries


def help_flags(command: str) -> set[str]:
    module = importlib.import_module(COMMANDS.get(command, DEFAULT))
    parser = module.parser()
    return {s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")}


@pytest.mark.parametrize("command", ["rewrite", *COMMANDS])
def test_the_usage_block_lists_every_flag_of_help_and_no_other(command):
    entries = usage_entries()
    assert command in entries, f"the README has no usage line for {command}"
    listed = set(FLAG.findall(entries[command]))
    flags = help_flags(command)
    # A flag with a short and a long spelling (-o, --output) is listed by either.
    module = importlib.import_module(COMMANDS.get(command, DEFAULT))
    missing = [
        a.option_strings
        for a in module.parser()._actions
        if a.option_strings
        and "--help" not in a.option_strings
        and not set(a.option_strings) & listed
    ]
    assert not missing, f"{command}: --help has flags the README does not list: {missing}"
    assert listed <= flags, f"{command}: the README lists unknown flags {listed - flags}"


PYTHON_BLOCKS = fenced("python")


def _needs(code: str) -> list:
    """Marks for an example: the fine-tune hook trains with TensorFlow (slow)."""
    if "tflrewrite.finetune" not in code:
        return []
    missing = importlib.util.find_spec("tensorflow") is None
    return [pytest.mark.slow, pytest.mark.skipif(missing, reason="needs TensorFlow")]


@pytest.mark.parametrize(
    "code",
    [pytest.param(c, marks=_needs(c), id=f"block{i}") for i, c in enumerate(PYTHON_BLOCKS)],
)
def test_each_python_example_runs(code, tmp_path, example_model):
    """In a fresh folder holding the example model as model.tflite and its samples as
    samples.npz, as the README says."""
    shutil.copy(example_model, tmp_path / "model.tflite")
    shutil.copy(ROOT / "examples" / "digits_samples.npz", tmp_path / "samples.npz")
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_there_are_python_examples_and_they_use_the_api():
    assert len(PYTHON_BLOCKS) >= 3
    assert any("tflrewrite.rewrite(" in c for c in PYTHON_BLOCKS)
