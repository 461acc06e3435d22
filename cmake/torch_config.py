"""Prints what CMakeLists.txt needs to know about the installed torch (and pybind11), as
NAME=VALUE lines.

Used instead of find_package(Torch), which requires cuBLAS and nvrtc from a full CUDA toolkit
even for extensions that use neither. Lists are '|'-separated.
"""

import glob
import os

import pybind11
import torch

torch_dir = os.path.dirname(torch.__file__)
# The stable ABI's headers (torch/csrc/stable, torch/headeronly) live under include/.
include_dirs = [os.path.join(torch_dir, "include")]
# CUDA headers that torch's own CUDA headers include (cuBLAS, cuSPARSE, ...), shipped by the
# nvidia-* wheels next to torch when the system toolkit lacks them.
site_packages = os.path.dirname(torch_dir)
cuda_include_dirs = sorted(glob.glob(os.path.join(site_packages, "nvidia", "*", "include")))

local_gpu_arch = ""
if torch.cuda.is_available():
    major, minor = torch.cuda.get_device_capability(0)
    local_gpu_arch = f"{major}.{minor}"

print(f"TORCH_VERSION={torch.__version__}")
print(f"TORCH_INCLUDE_DIRS={'|'.join(include_dirs)}")
print(f"TORCH_LIBRARY_DIR={os.path.join(torch_dir, 'lib')}")
print(f"TORCH_CUDA_VERSION={torch.version.cuda or ''}")
print(f"TORCH_CUDA_INCLUDE_DIRS={'|'.join(cuda_include_dirs)}")
print(f"TORCH_LOCAL_GPU_ARCH={local_gpu_arch}")
print(f"PYBIND11_INCLUDE_DIR={pybind11.get_include()}")
