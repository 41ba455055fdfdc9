"""Sphinx extension: the conventions table of docs/conventions.md, generated from the records.

At the start of every build it writes ``docs/_generated/conventions_table.md`` (ignored by
git) with one row per record of ``lsref.conventions.CONVENTIONS``; ``conventions.md``
includes that file. A record added to ``lsref/conventions.py`` appears on the site with no
edit to the docs. ``table_markdown()`` needs no Sphinx (tests/test_site.py calls it).
"""
import pathlib
import string

GENERATED = pathlib.Path(__file__).resolve().parents[1] / "_generated"
TABLE = GENERATED / "conventions_table.md"

HEADER = ("Convention", "The framework call, and the arguments it takes", "What it computes")


def _text(s):
    """Plain text in a Markdown table cell: every ASCII punctuation character escaped (so a
    ``*`` or ``_`` in a note stays itself), cell separators included."""
    s = " ".join(str(s).split())
    return "".join("\\" + c if c in string.punctuation else c for c in s)


def _code(s):
    s = " ".join(str(s).split()).replace("|", "\\|")
    return f"`{s}`" if s else ""


def _arguments(record):
    """The argument names, the smoothing one and the weight one marked."""
    out = []
    for name in record.params:
        marks = []
        if name == record.smoothing_param:
            marks.append("smoothing")
        if name == record.weight_param:
            marks.append("weights")
        out.append(_code(name) + (f" ({', '.join(marks)})" if marks else ""))
    return ", ".join(out) or "none"


def _source(record):
    if not record.source:
        return ""
    repo, _, path = record.source.partition(":")
    return f" Read from {_text(repo.strip())}: {_code(path.strip())}\\."


def rows():
    """One tuple of Markdown cells per record, in the order of ``CONVENTIONS``."""
    from lsref.conventions import CONVENTIONS
    return [(_code(name), f"{_code(c.call)}\\; arguments: {_arguments(c)}",
             _text(c.notes) + _source(c))
            for name, c in CONVENTIONS.items()]


def table_markdown():
    """The whole table, as the Markdown text ``conventions.md`` includes."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows()]
    return "\n".join(lines) + "\n"


def write_table(app=None):
    GENERATED.mkdir(exist_ok=True)
    text = table_markdown()
    # rewritten only when it changes, so that an incremental build does not redo the page
    if not TABLE.exists() or TABLE.read_text() != text:
        TABLE.write_text(text)


def setup(app):
    app.connect("builder-inited", write_table)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
