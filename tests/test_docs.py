"""The examples people read run: docstrings (doctest) and the README's Python blocks."""
import doctest
import importlib
import pathlib
import re

import pytest

from support import require

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


PACKAGE = README.parent / "lsref"
# every module of the package whose docstrings hold an example, found by reading the files
# (a list written by hand missed lsref.linear and lsref.dask)
WITH_EXAMPLES = sorted(
    ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    for path in PACKAGE.rglob("*.py") if ">>>" in path.read_text())


def test_the_examples_are_found():
    assert {"loss", "reference", "linear", "dask", "app.cli"} <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name):
    if name == "dask":
        require("dask")
    # the module itself (lsref.verify, the attribute, is the function of that name)
    module = importlib.import_module(f"lsref.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    namespace = {"__name__": "readme"}          # one session, as a reader runs them in order
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)


def test_readme_states_the_two_commands_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_cmd = 'python3 -m pip install ".[test]" && pytest'
    assert test_cmd in text and test_cmd in ci
    assert 'python3 -m pip install ".[demo]" && lsref demo' in text
