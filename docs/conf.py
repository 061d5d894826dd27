"""Sphinx configuration of the detgn documentation (``make docs`` writes docs/_build/html).

Sphinx with MyST: the guides are Markdown, so the same files read well on GitHub, and the
API reference is built from the docstrings (autodoc, with napoleon for their ``Args:`` /
``Returns:`` sections). The config reference is generated here, before the build, from the
comments of ``detgn/config/defaults.py``.
"""
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

import detgn  # noqa: E402
from detgn.config.reference import config_reference_markdown  # noqa: E402

GENERATED = DOCS / "_generated"
GENERATED.mkdir(exist_ok=True)
_reference = GENERATED / "config_reference.md"
_text = config_reference_markdown() + "\n"
if not _reference.is_file() or _reference.read_text(encoding="utf-8") != _text:  # unchanged: no rebuild
    _reference.write_text(_text, encoding="utf-8")

project = "detgn"
author = "detgn contributors"
copyright = "2026, detgn contributors (Apache-2.0)"
release = version = detgn.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "alabaster"
html_title = f"detgn {release}"
html_static_path = []
