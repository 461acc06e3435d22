"""torchvision is optional (issue 11): the operators need only torch and numpy, so installing the
package never makes pip pick a torchvision (whose every release requires one exact torch, and
would replace the user's). What needs torchvision says so, naming the extra to install."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata

import pytest
import torch

from ssanet_ops import reference
from ssanet_ops._torchvision import install_command


def run_python(
    code: str, folder, torchvision: bool = True, path=None
) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter started in `folder` (not the source root, whose
    ssanet_ops/ would shadow the installed package). Without `torchvision` it cannot be
    imported, as where it is not installed: a None entry in sys.modules fails the import and
    makes find_spec return None. `path`: a folder put first on sys.path (PYTHONPATH)."""
    prelude = "import sys\n" + ("" if torchvision else "sys.modules['torchvision'] = None\n")
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        check=False,
        cwd=folder,
        env=None if path is None else {**os.environ, "PYTHONPATH": str(path)},
    )


def test_the_package_requires_torchvision_only_through_extras():
    requirements = metadata.requires("ssanet-ops")
    torchvision = [r for r in requirements if r.split(";")[0].strip().startswith("torchvision")]
    assert torchvision, "no extra provides torchvision"
    assert all("extra ==" in r for r in torchvision), torchvision
    assert any(r.startswith("torch>=") and "extra" not in r for r in requirements)


def test_operators_and_their_references_never_import_torchvision(tmp_path):
    code = """
import torch
import ssanet_ops
from ssanet_ops import reference

x = torch.randn(2, 3, 9, 9, requires_grad=True)
boxes = torch.tensor([[0, 1.0, 1.0, 6.0, 7.0], [1, 0.0, 2.0, 8.0, 8.0]])
scales = ssanet_ops.scale_factors(1.25, 3)
ssanet_ops.oriented_pool(x).sum().backward()
ssanet_ops.multiscale_roi_crop(x, boxes, 3, scales).sum().backward()
ssanet_ops.scale_candidates(boxes, scales, (9, 9))
phi, weight = torch.randn(4, 3, 5), torch.randn(6, 3, 5)
ssanet_ops.scale_align(phi, weight)
ssanet_ops.scale_correlation(phi, weight)
reference.oriented_pool(x)
reference.scale_candidates(boxes, scales, (9, 9))
reference.scale_align(phi, weight)
print("ran")
"""
    # Where torchvision is installed, nothing above may import it either.
    done = run_python(code + "assert 'torchvision' not in sys.modules\n", tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "ran", done.stderr
    done = run_python(code, tmp_path, torchvision=False)
    assert done.returncode == 0 and done.stdout.strip() == "ran", done.stderr


def test_the_reference_crop_names_the_extra_without_torchvision(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.delitem(sys.modules, "torchvision.ops", raising=False)
    x, boxes = torch.randn(1, 1, 4, 4), torch.tensor([[0, 0.0, 0.0, 2.0, 2.0]])
    with pytest.raises(ImportError, match="needs torchvision") as error:
        reference.multiscale_roi_crop(x, boxes, 2, [1.0])
    message = str(error.value)
    assert "'vision' extra" in message
    # Pinned without the local label, which would match no other build of that release.
    assert f"'torch=={torch.__version__.split('+')[0]}'" in message


def test_the_model_layer_names_the_extra_without_torchvision(tmp_path):
    # import ssanet works (the command answers --help without torchvision); its model layer
    # and data say in one line what is missing and how to install it.
    for module in ("ssanet.model", "ssanet.data"):
        done = run_python(f"import ssanet\nimport {module}", tmp_path, torchvision=False)
        assert done.returncode != 0
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("ssanet_ops._torchvision.TorchvisionUnavailable: ssanet (the model")
        assert "torchvision is not installed" in last and "'train' extra" in last
        assert f"pip install torchvision 'torch=={torch.__version__.split('+')[0]}'" in last


def run_command(arguments: list[str], folder, torchvision: bool = True, path=None):
    """``ssanet ARGUMENTS`` (cli.main, as the script runs it) in a fresh interpreter."""
    code = f"from ssanet.cli import main\nraise SystemExit(main({arguments!r}))\n"
    return run_python(code, folder, torchvision, path)


def test_the_command_answers_help_and_version_without_torchvision(tmp_path):
    version = run_command(["--version"], tmp_path, torchvision=False)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"ssanet {metadata.version('ssanet-ops')}"
    for arguments in (["--help"], ["train", "--help"], ["predict", "--help"]):
        shown = run_command(arguments, tmp_path, torchvision=False)
        assert shown.returncode == 0 and "usage: ssanet" in shown.stdout, shown.stderr


def test_a_command_without_torchvision_names_the_extra_in_one_line(tmp_path):
    done = run_command(["make-synthetic", str(tmp_path / "data")], tmp_path, torchvision=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("ssanet make-synthetic: error: ssanet (the model layer")
    assert "torchvision is not installed" in done.stderr and "'train' extra" in done.stderr


def fake_torchvision(folder, required_torch: str, init: str = ""):
    """A folder holding a package named torchvision (version 9.9.9, requiring
    ``torch==required_torch``, whose ``__init__`` is `init`), to put first on sys.path."""
    (folder / "torchvision").mkdir()
    (folder / "torchvision" / "__init__.py").write_text(init)
    info = folder / "torchvision-9.9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: torchvision\nVersion: 9.9.9\n"
        f"Requires-Dist: torch (=={required_torch})\nRequires-Dist: numpy\n"
    )
    return folder


def test_a_torchvision_made_for_another_torch_is_named_with_both_versions(tmp_path):
    # A torchvision release declares the one torch it was built for: it is not imported.
    site = fake_torchvision(tmp_path, "2.10.0", init="raise AssertionError('imported')\n")
    done = run_command(["make-synthetic", str(tmp_path / "data")], tmp_path, path=site)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    message = done.stderr
    assert f"torchvision 9.9.9 is made for torch 2.10.0, not torch {torch.__version__}" in message
    # pip would keep the torchvision installed: the fix removes it first.
    assert "pip uninstall -y torchvision && pip install torchvision 'torch==" in message


def test_a_torchvision_that_does_not_load_beside_this_torch_is_named(tmp_path):
    # PyPI's torchvision is a CUDA build: beside a CPU-only torch of the release it requires,
    # its import fails (issue 23, with torch 2.13.0+cpu and torchvision 0.28.0).
    release = torch.__version__.split("+")[0]
    site = fake_torchvision(
        tmp_path, release, init="raise RuntimeError('operator torchvision::nms does not exist')\n"
    )
    done = run_command(["make-synthetic", str(tmp_path / "data")], tmp_path, path=site)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert (
        f"torchvision 9.9.9 does not load beside torch {torch.__version__} "
        "(operator torchvision::nms does not exist)"
    ) in done.stderr
    assert "same index" in done.stderr and "pip uninstall -y torchvision && " in done.stderr
    # ssanet --version still answers there, and the operators' reference says the same.
    assert run_command(["--version"], tmp_path, path=site).returncode == 0
    crop = run_python(
        "import torch\nfrom ssanet_ops import reference\n"
        "reference.multiscale_roi_crop(torch.zeros(1, 1, 4, 4), "
        "torch.tensor([[0, 0.0, 0.0, 2.0, 2.0]]), 2, [1.0])\n",
        tmp_path,
        path=site,
    )
    last = crop.stderr.strip().splitlines()[-1]
    assert "does not load beside torch" in last and "'vision' extra" in last


@pytest.mark.parametrize(
    ("torch_version", "command"),
    [
        ("2.13.0", "pip install torchvision 'torch==2.13.0'"),
        (
            "2.13.0+cpu",
            "pip install torchvision 'torch==2.13.0' --index-url https://download.pytorch.org/whl/cpu",
        ),
        (
            "2.14.1+cu130",
            "pip install torchvision 'torch==2.14.1' "
            "--index-url https://download.pytorch.org/whl/cu130",
        ),
        ("2.15.0a0+git1234", "pip install torchvision 'torch==2.15.0a0'"),
    ],
)
def test_the_install_command_takes_torchvision_from_the_index_of_the_torch(
    monkeypatch, torch_version, command
):
    # A labelled torch (+cpu, +cu130) comes from PyTorch's index of that label, where the
    # torchvision built for it is; PyPI's is a CUDA build.
    monkeypatch.setattr(torch, "__version__", torch_version)
    assert install_command() == command
