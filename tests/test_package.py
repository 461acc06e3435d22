"""The package around the kernels: build_info, and the errors when _C cannot be used."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import ssanet_ops
from ssanet_ops import _extension


def test_build_info_describes_this_build():
    info = ssanet_ops.build_info()
    assert info["version"] == ssanet_ops.__version__
    assert info["torch_version"] == torch.__version__
    assert isinstance(info["cuda"], bool)
    assert info["cxx_compiler"]
    if info["cuda"]:
        assert info["cuda_version"] and info["cuda_compiler"]
        assert all(arch[:2].isdigit() for arch in info["cuda_architectures"])
    else:
        assert info["cuda_version"] is None and info["cuda_architectures"] is None


def test_ops_are_registered_with_the_dispatcher():
    assert hasattr(torch.ops.ssanet_ops, "oriented_pool")
    assert hasattr(torch.ops.ssanet_ops, "_oriented_pool_backward")


def test_torch_version_mismatch_names_both_versions(monkeypatch):
    monkeypatch.setattr(
        _extension, "_read_build_config", lambda: {"torch_version": "1.2.3+elsewhere"}
    )
    with pytest.raises(ImportError) as error:
        _extension.load()
    message = str(error.value)
    assert "1.2.3+elsewhere" in message and torch.__version__ in message
    assert _extension.REBUILD_COMMAND in message


def test_missing_extension_says_how_to_build(tmp_path):
    # A copy of the Python sources without the compiled _C and its build record, imported in
    # a fresh interpreter that sees torch but not the installed ssanet_ops.
    package_dir = Path(ssanet_ops.__file__).parent
    copy = tmp_path / "ssanet_ops"
    shutil.copytree(
        package_dir, copy, ignore=shutil.ignore_patterns("_C*", "_build_config.json", "__pycache__")
    )
    torch_site = str(Path(torch.__file__).parent.parent)
    paths = [str(tmp_path), torch_site, sysconfig.get_paths()["purelib"]]
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import ssanet_ops"],
        env={"PYTHONPATH": ":".join(paths), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "ImportError: the compiled extension ssanet_ops._C is missing from" in result.stderr
    assert str(copy) in result.stderr
    assert "pip install --no-build-isolation" in result.stderr


def test_ops_run_under_inference_mode():
    # The CPU kernels call ATen ops from worker threads; under inference mode those threads
    # must see the caller's mode, or writing inference tensors fails. Sizes large enough that
    # every kernel splits its work across threads.
    phi = torch.randn(8, 5, 16 * 7 * 7 * 64)
    weight = torch.randn(200, 5, 16 * 7 * 7 * 64)
    maps = torch.randn(16, 256, 7, 7)
    images = torch.randn(2, 32, 64, 64)
    boxes = torch.tensor([[0, 4.0, 4.0, 40.0, 40.0], [1, 10.0, 0.0, 60.0, 30.0]])
    with torch.no_grad():
        logits, shift = ssanet_ops.scale_align(phi, weight)
        pooled = ssanet_ops.oriented_pool(maps)
        crops = ssanet_ops.multiscale_roi_crop(images, boxes, 7, [0.8, 1.0, 1.25])
    with torch.inference_mode():
        torch.testing.assert_close(ssanet_ops.scale_align(phi, weight)[0], logits)
        assert torch.equal(ssanet_ops.scale_align(phi, weight)[1], shift)
        assert torch.equal(ssanet_ops.oriented_pool(maps), pooled)
        assert torch.equal(
            ssanet_ops.multiscale_roi_crop(images, boxes, 7, [0.8, 1.0, 1.25]), crops
        )
