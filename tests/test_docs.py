"""The examples in the docstrings, the README and the documentation pages run and print what
they show, the documentation site builds without a warning, and CI runs exactly the README's
test command."""

from __future__ import annotations

import doctest
import importlib
import importlib.resources
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bceloss

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
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


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_docs_page_examples(page):
    result = doctest.testfile(
        str(page), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE
    )
    assert result.failed == 0
    if re.search(r"^>>> ", page.read_text(), re.MULTILINE):  # its examples ran
        assert result.attempted > 0


def test_every_docs_page_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text()
    assert PAGES
    for page in PAGES:
        assert f": {page.name}\n" in config, page.name


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "api" / "index.html").exists()


def test_docs_do_not_cite_the_spec():
    for path in [ROOT / "README.md", *PAGES]:
        assert "SPEC" not in path.read_text(), path.name


def test_readme_first_command_runs_from_an_installed_package():
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"^ {4}(\S.*)$", readme, re.MULTILINE).group(1)
    assert "bceloss eval" in first, first
    assert "src/" not in first, first  # no path into a source checkout
    # what the README says it prints is the loss of the sample shipped in the package
    sample = importlib.resources.files("bceloss") / "data" / "breast_cancer.csv"
    logit, _, malignant = np.loadtxt(sample, delimiter=",", skiprows=1).T
    loss = float(bceloss.binary_cross_entropy_with_logits(logit, malignant))
    assert f"`{loss!r}`" in readme


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^ {4}(python -m pip install .*\[test\].*)$", readme, re.MULTILINE)
    assert len(commands) == 1, commands
    assert commands[0] in ci.splitlines()
