"""The examples in the docstrings and the README run and print what they show, and CI runs
exactly the README's test command."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import bceloss

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(bceloss.__path__, "bceloss.")
    if m.name != "bceloss.__main__"
)


@pytest.mark.parametrize("name", ["bceloss", *MODULES])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_readme_examples():
    result = doctest.testfile(
        str(ROOT / "README.md"), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE
    )
    assert result.failed == 0
    assert result.attempted > 0


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^ {4}(python -m pip install .*\[test\].*)$", readme, re.MULTILINE)
    assert len(commands) == 1, commands
    assert commands[0] in ci.splitlines()
