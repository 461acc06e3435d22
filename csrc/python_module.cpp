// The Python module ssanet_ops._C: how this build was made, and the file names of its op
// libraries (ssanet_ops/_extension.py loads them with torch.ops.load_library). It includes no
// torch header and links against no torch library, so it imports under any torch; the op
// libraries reach torch through its stable ABI only (issue 11).

#include <Python.h>
#include <pybind11/pybind11.h>

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["version"] = SSANET_OPS_VERSION;
  info["torch_version"] = SSANET_OPS_TORCH_VERSION;
  info["target_torch_version"] = SSANET_OPS_TARGET_TORCH_VERSION;
  info["cxx_compiler"] = SSANET_OPS_CXX_COMPILER;
  info["cpu_library"] = SSANET_OPS_CPU_LIBRARY;
#ifdef SSANET_OPS_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = SSANET_OPS_CUDA_VERSION;
  info["cuda_architectures"] = SSANET_OPS_CUDA_ARCHITECTURES;
  info["cuda_compiler"] = SSANET_OPS_CUDA_COMPILER;
  info["cuda_library"] = SSANET_OPS_CUDA_LIBRARY;
#else
  info["cuda"] = false;
  info["cuda_version"] = pybind11::none();
  info["cuda_architectures"] = pybind11::none();
  info["cuda_compiler"] = pybind11::none();
  info["cuda_library"] = pybind11::none();
#endif
#ifdef SSANET_OPS_SIM_LIBRARY
  info["simulator_library"] = SSANET_OPS_SIM_LIBRARY;
#else
  info["simulator_library"] = pybind11::none();
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "ssanet_ops build information; the operators live in torch.ops.ssanet_ops";
  m.def("build_info", &build_info, "How this extension was built, and its op libraries' files");
}
