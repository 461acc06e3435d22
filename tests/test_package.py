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
