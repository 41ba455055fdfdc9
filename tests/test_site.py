"""The documentation site (docs/), checked without Sphinx: the API page names every public
name, the conventions table has a row per record, and every page's Python blocks run."""
import importlib
import pathlib
import re
import sys

import pytest

import lsref
from support import require

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
API = DOCS / "api.rst"
# the public submodules whose names the API page lists (each with an __all__)
SUBMODULES = ["reference", "testing", "calibration", "conventions", "sharded", "dask",
              "linear"]


def documented_names():
    """The fully qualified names of api.rst's autosummary entries (each gets its own page)
    and ``data`` directives (constants): each is qualified by the ``currentmodule`` directive
    above it."""
    names, module, in_summary = set(), None, False
    for line in API.read_text().splitlines():
        m = re.match(r"\.\. (?:py:)?data:: (\S+)", line)      # a constant, described by hand
        if m:
            names.add(f"{module}.{m.group(1)}")
            in_summary = False
            continue
        m = re.match(r"\.\. currentmodule:: (\S+)", line)
        if m:
            module, in_summary = m.group(1), False
            continue
        if line.startswith(".. autosummary::"):
            in_summary = True
            continue
        if in_summary:
            entry = line.strip()
            if not line.startswith("   ") and entry:
                in_summary = False              # the directive's indented body has ended
            elif entry and not entry.startswith(":"):
                names.add(f"{module}.{entry}")
    return names


def test_api_page_lists_every_public_name():
    documented = documented_names()
    missing = [n for n in lsref.__all__ if f"lsref.{n}" not in documented]
    assert not missing, f"docs/api.rst has no autosummary entry for lsref.{missing}"


@pytest.mark.parametrize("module", SUBMODULES)
def test_api_page_lists_every_public_name_of_the_submodules(module):
    if module == "dask":
        require("dask")
    mod = importlib.import_module(f"lsref.{module}")
    assert f"lsref.{module}" in documented_names()
    missing = [n for n in mod.__all__ if f"lsref.{module}.{n}" not in documented_names()]
    assert not missing, f"docs/api.rst has no autosummary entry for lsref.{module}.{missing}"


def test_api_page_names_only_what_exists():
    for name in documented_names():
        module, _, attr = name.rpartition(".")
        if module == "lsref.dask":
            require("dask")
        assert hasattr(importlib.import_module(module), attr), name


def test_conventions_table_has_a_row_per_record():
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import conventions_table
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    from lsref.conventions import CONVENTIONS
    table = conventions_table.table_markdown().splitlines()
    assert len(table) == 2 + len(CONVENTIONS)
    for line, name in zip(table[2:], CONVENTIONS):
        assert line.startswith(f"| `{name}` |")
        assert line.count(" | ") == len(conventions_table.HEADER) - 1   # no stray separator
    assert "_generated/conventions_table.md" in (DOCS / "conventions.md").read_text()


PAGES = sorted(DOCS.glob("*.md"))
# what a page's blocks may import beyond the test extra: skipped without it, except in CI
# (LSREF_REQUIRE_FRAMEWORKS=1), where a missing one fails
OPTIONAL = ("dask", "distributed", "torch", "jax", "optax", "tensorflow", "keras",
            "transformers")


def test_toctree_has_every_page():
    index = (DOCS / "index.md").read_text()
    toctree = re.search(r"```\{toctree\}\n(.*?)```", index, flags=re.S).group(1)
    entries = [e for e in toctree.splitlines() if e and not e.startswith(":")]
    # every page of docs/, in the reading order (a page that no toctree holds would fail the
    # -W build too: Sphinx warns about it)
    named = ["usage", "mathematics", "verify", "conventions", "models", "scale-out",
             "performance", "building", "cli"]
    assert entries == [*named, "api"]
    assert set(named) == {p.stem for p in PAGES} - {"index"}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_python_blocks_run(page, tmp_path, monkeypatch):
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    if not blocks:
        pytest.skip(f"{page.name} has no Python block")
    code = "\n".join(blocks)
    for name in OPTIONAL:
        if re.search(rf"^\s*(import|from) {name}\b", code, flags=re.M) or (
                name == "dask" and "lsref.dask" in code):
            require(name)
    monkeypatch.chdir(tmp_path)                 # a block that writes a file writes it here
    namespace = {"__name__": page.stem}         # one session per page, blocks in order
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)
