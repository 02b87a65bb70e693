"""Sphinx configuration of the documentation site (`make docs` builds it into docs/_build/html)."""

from __future__ import annotations

import camegrad_jax

project = "camegrad-jax"
author = "camegrad-jax developers"
copyright = "2026, camegrad-jax developers"
release = camegrad_jax.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]

# `$...$` and `$$...$$` for the algorithm page's equations; `{attribute}` for anchored headings.
myst_enable_extensions = ["dollarmath", "amsmath", "attrs_block"]
myst_heading_anchors = 3

# The docstrings are Google style ("Args:", "Returns:", "Examples:").
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}

html_theme = "sphinx_book_theme"
html_title = "camegrad-jax"
html_theme_options = {"show_toc_level": 2}


def _drop_type_docstrings(app, what, name, obj, options, lines):
    # A constant has no docstring of its own: autodoc would show its type's (tuple's, dict's).
    del app, name, options
    own = " ".join(" ".join(lines).split())
    if what == "data" and own == " ".join((type(obj).__doc__ or "").split()):
        lines.clear()


def setup(app):
    app.connect("autodoc-process-docstring", _drop_type_docstrings)
