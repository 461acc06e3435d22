"""A Sphinx extension: every public name must be on the API pages, and a reference to a name
that a package re-exports leads to where that object is documented.

The public names of a module are its ``__all__``; the modules checked are every module of the
packages in ``public_packages`` (conf.py) whose dotted name has no part starting with ``_``. A
name counts as documented when the API pages describe it under that name or the same object
under another (``ssanet.SSANet`` is ``ssanet.model.SSANet``). Each name that is not gets a
warning naming it, which ``sphinx-build -W`` turns into a failed build.

A reference such as ``:func:`ssanet.save_checkpoint``` names an object documented as
``ssanet.checkpoint.save_checkpoint``: when no page documents the name itself, it resolves to
the page that documents the same object.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import types

from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.nodes import make_refnode

logger = logging.getLogger(__name__)


def public_modules(package_name: str) -> list[types.ModuleType]:
    """The package and each of its Python submodules with no name part starting with "_" (not
    the compiled op libraries beside them)."""
    package = importlib.import_module(package_name)
    modules = [package]
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
        private = any(part.startswith("_") for part in info.name.split("."))
        if not private and importlib.util.find_spec(info.name).origin.endswith(".py"):
            modules.append(importlib.import_module(info.name))
    return modules


def _resolve(name: str, module: bool = False):
    """The object a dotted name stands for, or None; an attribute of a module before a
    submodule of the same name unless ``module`` (``ssanet.model.operators`` is a function)."""
    parts = name.split(".")
    for cut in range(len(parts) if module else len(parts) - 1, 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attribute in parts[cut:]:
                value = getattr(value, attribute)
        except AttributeError:
            return None
        return value
    return None


def undocumented(documented: dict[str, str], packages: list[str]) -> list[str]:
    """``module.name`` of every public name that the documented names do not cover."""
    # Functions, classes and modules count as documented under any name; values (constants)
    # only under a name that ends in theirs, since equal values are often the same object.
    objects = {}
    for name, objtype in documented.items():
        value = _resolve(name, module=objtype == "module")
        if value is not None:
            objects.setdefault(id(value), set()).add(name.rpartition(".")[2])
    missing = []
    for package in packages:
        for module in public_modules(package):
            for name in getattr(module, "__all__", ()):
                value = getattr(module, name)
                full = f"{module.__name__}.{name}"
                if full in documented:
                    continue
                names = objects.get(id(value), set())
                if isinstance(value, (type, types.FunctionType, types.ModuleType)) and names:
                    continue
                if name in names:
                    continue
                missing.append(full)
    return sorted(missing)


def _documented(env) -> dict[str, str]:
    """Every documented Python name and its type."""
    return {name: objtype for name, _, objtype, *_ in env.get_domain("py").get_objects()}


def check(app: Sphinx, env) -> None:
    for full in undocumented(_documented(env), app.config.public_packages):
        logger.warning("public name %s is on no API page (docs/api/)", full, type="public_names")


def resolve_reexport(app: Sphinx, env, node, contnode):
    """A missing Python reference to an object documented under another name: a reference to
    that name (tried in the referring module first, as Sphinx itself tries names)."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip(".~")
    module = node.get("py:module")
    candidates = [f"{module}.{target}", target] if module else [target]
    documented = _documented(env)
    for candidate in candidates:
        value = _resolve(candidate)
        if value is None or isinstance(value, (str, int, float, bool)):
            continue  # equal constants are often one object: only a name decides for them
        for name, objtype in documented.items():
            if name != candidate and _resolve(name, module=objtype == "module") is value:
                docname, node_id, *_ = env.get_domain("py").objects[name]
                return make_refnode(app.builder, node["refdoc"], docname, node_id, contnode, name)
    return None


# Napoleon reads the first line of a constant's docstring (a ``#:`` comment) as "type:
# description" when it holds a colon; these are prose. The text before napoleon ran is kept.
_data_docstrings: dict[str, list[str]] = {}


def _keep_data_docstring(app, what, name, obj, options, lines) -> None:
    if what == "data":
        _data_docstrings[name] = list(lines)


def _restore_data_docstring(app, what, name, obj, options, lines) -> None:
    if what == "data" and name in _data_docstrings:
        lines[:] = _data_docstrings.pop(name)


def setup(app: Sphinx) -> dict:
    # Before and after napoleon's handler (priority 500).
    app.connect("autodoc-process-docstring", _keep_data_docstring, priority=100)
    app.connect("autodoc-process-docstring", _restore_data_docstring, priority=900)
    app.add_config_value("public_packages", [], "env")
    app.connect("env-check-consistency", check)
    app.connect("missing-reference", resolve_reexport)
    return {"version": "1", "parallel_read_safe": True}
