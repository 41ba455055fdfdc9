"""The examples people read run: docstrings (doctest) and the README's Python blocks."""
import doctest
import importlib
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("name", ["loss", "reference", "verify", "testing", "criterion",
                                  "calibration", "sharded", "conventions", "evidence"])
def test_docstring_examples(name):
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
