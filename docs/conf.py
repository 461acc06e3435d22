"""Sphinx configuration of the documentation site.

Build it (from the repository root, in an environment with ssanet-ops installed, which autodoc
imports, and docs/requirements.txt):

    sphinx-build -W --keep-going -n docs docs/_build/html

``-W`` makes every warning an error (a broken cross-reference, an undocumented public name:
see ``_ext/public_names.py``), ``-n`` (nitpicky) checks every reference to our own names.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "ssanet_ops"
author = "the ssanet_ops authors"
copyright = "the ssanet_ops authors"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "public_names",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = "ssanet_ops"
html_static_path: list[str] = []

# autodoc: every name of a module's __all__, with its signature in the text it documents.
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "exclude-members": "extra_repr",  # torch.nn.Module's printing hook
}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# A method without a docstring stays without one: torchvision's would cite its own pages.
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Nitpicky: a reference to one of our names that resolves nowhere is an error. References to
# other libraries' names (torch, numpy, the standard library's) have no inventory to resolve
# against here (the site builds offline), so they are not checked.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|numpy|np|nn|matplotlib|torchvision|PIL|argparse|os|pathlib|typing)(\..*)?"),
    (r"py:.*", r"(collections\.abc|contextlib|dataclasses|subprocess|types|enum)\..*"),
    (r"py:class", r"(Path|Tensor|Module|Any|Callable|Iterable|Iterator|Sequence|Mapping)"),
    (r"py:class", r"(optional|callable|Figure|PathLike|AbstractContextManager|Generator)"),
]

# The modules whose every public name (its __all__) must be documented on the API pages:
# public_names.py warns about each one that is not. Every public module of the two packages
# (no part of its name starting with "_") must be listed, or be a package's only face.
public_packages = ["ssanet_ops", "ssanet"]
