"""The documentation's examples run as written (issues 21 and 23): every ```python block of
README.md and of docs/ (each in a fresh namespace, in a folder of its own), the docstring
examples of every public function and class of ``ssanet_ops`` (doctest; each has one) and the
``>>>`` examples of the pages (the API pages' constants). Examples that need torchvision, a GPU
or the CUDA simulator skip without them. And README.md stays the front door: at most 250
lines, its quick start the one the getting-started page repeats."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import pkgutil
import re
import types
from pathlib import Path

import pytest
import torch

import ssanet_ops
from ssanet_ops.testing import simulator_available

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [
    README,
    *sorted(path for path in (ROOT / "docs").rglob("*.md") if "_build" not in path.parts),
]
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
HAS_CUDA = torch.cuda.is_available()
README_MAX_LINES = 250


def _skip_reason(code: str) -> str | None:
    """Why an example cannot run here, or None."""
    uses_model_layer = re.search(r"^\s*(import ssanet\b|from ssanet\b)", code, re.M)
    # The reference crop is torchvision's roi_align on the candidates.
    uses_roi_align = "torchvision" in code or "reference.multiscale_roi_crop" in code
    if not HAS_TORCHVISION and (uses_roi_align or uses_model_layer):
        return "needs torchvision (the 'train' or 'vision' extra)"
    statements = re.sub(r"#.*", "", code)  # comments may name CUDA without using it
    if not HAS_CUDA and re.search(r"\"cuda\"|'cuda'|\.cuda\(", statements):
        return "needs a GPU"
    if re.search(r"simulate_cuda|simulated_ops|simulator_available", code) and not (
        simulator_available()
    ):
        return "needs the CUDA simulator (built by default)"
    return None


# The ```python blocks of the pages -----------------------------------------------------------


def _python_blocks() -> list:
    blocks = []
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
            line = text.count("\n", 0, match.start()) + 1
            name = f"{page.relative_to(ROOT)}:{line}"
            code = match.group(1)
            blocks.append(pytest.param(name, code, id=name))
    return blocks


@pytest.mark.parametrize(("name", "code"), _python_blocks())
def test_python_block_runs(name, code, tmp_path, monkeypatch):
    reason = _skip_reason(code)
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.chdir(tmp_path)  # the examples that write files write them here
    exec(compile(code, name, "exec"), {"__name__": "__main__"})


def test_python_blocks_are_found():
    # The extraction itself: every page's blocks, among them the README's one per op.
    names = [param.values[0] for param in _python_blocks()]
    assert sum(name.startswith("README.md:") for name in names) >= 4
    assert any(name.startswith("docs/ops.md:") for name in names)


# The docstrings of ssanet_ops ----------------------------------------------------------------


def _public_modules() -> list[types.ModuleType]:
    """ssanet_ops and each of its Python submodules with no name part starting with "_" (as
    the documentation's check, docs/_ext/public_names.py, takes them; not the op libraries)."""
    modules = [ssanet_ops]
    for info in pkgutil.walk_packages(ssanet_ops.__path__, prefix="ssanet_ops."):
        private = any(part.startswith("_") for part in info.name.split("."))
        if not private and importlib.util.find_spec(info.name).origin.endswith(".py"):
            modules.append(importlib.import_module(info.name))
    return modules


def _public_callables() -> list[tuple[str, object]]:
    """(name, object) of every function and class in a public module's __all__, once each."""
    found: dict[int, tuple[str, object]] = {}
    for module in _public_modules():
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, (type, types.FunctionType)):
                found.setdefault(id(value), (f"{module.__name__}.{name}", value))
    return sorted(found.values(), key=lambda item: item[0])


PUBLIC = _public_callables()


def _run_doctest(test: doctest.DocTest) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


@pytest.mark.parametrize(("name", "value"), PUBLIC, ids=[name for name, _ in PUBLIC])
def test_public_name_has_an_example(name, value):
    assert ">>>" in (inspect.getdoc(value) or ""), f"{name}'s docstring has no example"


@pytest.mark.parametrize(("name", "value"), PUBLIC, ids=[name for name, _ in PUBLIC])
def test_docstring_example_runs(name, value):
    finder = doctest.DocTestFinder(recurse=False)
    tests = finder.find(value, name, globs={"torch": torch, "ssanet_ops": ssanet_ops})
    assert tests and tests[0].examples
    # What the examples run decides (the prose may name the reference without using it).
    reason = _skip_reason("\n".join(example.source for test in tests for example in test.examples))
    if reason is not None:
        pytest.skip(reason)
    for test in tests:
        _run_doctest(test)


def test_public_names_are_found():
    # Every operator, module class and reference function is among them.
    names = {name for name, _ in PUBLIC}
    for op in ("oriented_pool", "multiscale_roi_crop", "scale_align", "scale_correlation"):
        assert f"ssanet_ops.{op}" in names and f"ssanet_ops.reference.{op}" in names
    assert {"ssanet_ops.nn.ScaleAlign", "ssanet_ops.testing.simulate_cuda"} <= names


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_page_doctest_examples_run(page):
    # `>>>` examples written into a page (the API pages' constants).
    text = page.read_text()
    if ">>>" not in text:
        return
    parser = doctest.DocTestParser()
    globs = {"torch": torch, "ssanet_ops": ssanet_ops}
    _run_doctest(parser.get_doctest(text, globs, str(page.relative_to(ROOT)), str(page), 0))


# The README as the front door ----------------------------------------------------------------


def _quick_start(text: str, start: str, end: str) -> list[str]:
    block = text[text.index(start) : text.index(end, text.index(start))]
    return [line for line in block.splitlines() if line and not line.startswith(("<!--", "```"))]


def test_readme_is_at_most_250_lines():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines"


def test_getting_started_repeats_the_readme_quick_start():
    readme = _quick_start(README.read_text(), "<!-- quickstart -->", "<!-- /quickstart -->")
    page = (ROOT / "docs" / "getting-started.md").read_text()
    repeated = _quick_start(page, "<!-- ci: skip: the quick start itself", "\n```\n")
    assert len(readme) == 2 and repeated == readme


# The site's check of public names (docs/_ext/public_names.py) -------------------------------


def test_site_check_reports_an_undocumented_public_name(monkeypatch):
    # The check sphinx-build -W fails on: every name of ssanet_ops's public modules counts as
    # documented under its own name or, for a function, class or module, under any name of
    # the same object; a name left off is reported.
    monkeypatch.syspath_prepend(str(ROOT / "docs" / "_ext"))
    public_names = pytest.importorskip("public_names", reason="needs sphinx (docs/requirements)")
    documented = {"ssanet_ops": "module", "ssanet_ops.ops.oriented_pool": "function"}
    missing = public_names.undocumented(documented, ["ssanet_ops"])
    assert "ssanet_ops.oriented_pool" not in missing  # the same function, documented in ops
    assert "ssanet_ops.ops.oriented_pool" not in missing
    assert {"ssanet_ops.scale_align", "ssanet_ops.nn.ScaleAlign"} <= set(missing)
    assert "ssanet_ops.MAX_SAMPLING_RATIO" in missing
    documented["ssanet_ops.MAX_SAMPLING_RATIO"] = "data"
    assert "ssanet_ops.MAX_SAMPLING_RATIO" not in public_names.undocumented(
        documented, ["ssanet_ops"]
    )
