"""torchvision is optional (issue 11): the operators need only torch and numpy, so installing the
package never makes pip pick a torchvision (whose every release requires one exact torch, and
would replace the user's). What needs torchvision says so, naming the extra to install."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest
import torch

from ssanet_ops import reference


def run_python(code: str, folder, torchvision: bool = True) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter started in `folder` (not the source root, whose
    ssanet_ops/ would shadow the installed package). Without `torchvision` it cannot be
    imported, as where it is not installed: a None entry in sys.modules fails the import and
    makes find_spec return None."""
    prelude = "import sys\n" + ("" if torchvision else "sys.modules['torchvision'] = None\n")
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        check=False,
        cwd=folder,
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
    done = run_python("import ssanet", tmp_path, torchvision=False)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ssanet (the model layer") and "'train' extra" in last
