"""Sphinx configuration of the lsref documentation site.

Build (offline, warnings are errors)::

    python3 -m pip install ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html
"""
import pathlib
import sys

import lsref

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

project = "lsref"
author = "the lsref developers"
copyright = "the lsref developers"
release = lsref.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_parser",
    # MathJax 3 shipped in a wheel and copied into _static: formulas render without a network
    # (sphinx.ext.mathjax alone loads MathJax from a CDN)
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",
    "conventions_table",            # docs/_ext: writes _generated/conventions_table.md
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# --- API pages -------------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": False}
autodoc_typehints = "none"          # numpydoc's Parameters sections give the types
# numpydoc lists a class's members itself; autosummary's class template does not, so nothing
# is documented twice (duplicate object descriptions are warnings, and -W makes them errors)
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

# --- MyST ------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# --- HTML ------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"lsref {release}"
html_static_path = ["_static"]
html_css_files = ["lsref.css"]
html_theme_options = {
    "navigation_with_keys": False,
    "header_links_before_dropdown": 3,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
    # nothing fetched from the network when a page is opened
    "icon_links": [],
}
# the section navigation only where a page has sections of its own: the API pages
# (the Markdown pages have none: pydata-sphinx-theme would show an empty column)
html_sidebars = {page.stem: [] for page in DOCS.glob("*.md")}
html_show_sourcelink = False
html_copy_source = False
