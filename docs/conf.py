"""Sphinx configuration of the prefork documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` (warnings are errors).  Pages
are MyST Markdown; the API reference (``api.rst``) is generated from the docstrings.  The
build needs no network: there is no intersphinx, so standard library names are plain text.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document the checkout, installed or not

import prefork  # noqa: E402

project = "prefork"
author = "the prefork authors"
copyright = "the prefork authors"
release = version = prefork.__version__

extensions = ["sphinx.ext.autodoc", "myst_parser"]

root_doc = "index"
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "systemd", "examples", "Thumbs.db", ".DS_Store"]

# MyST: ``{literalinclude}`` and other directives work as fences; headings get anchors so that
# links such as ``engine.md#settings`` resolve.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the socketserver API is documented untyped
autodoc_default_options = {"show-inheritance": True}
autoclass_content = "class"

html_theme = "alabaster"
html_title = f"prefork {release}"
html_static_path: list[str] = []
