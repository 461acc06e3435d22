// oriented_pool on the CPU: the shared cell functions of common/oriented_pool.h, run in
// parallel with at::parallel_for.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "oriented_pool/oriented_pool.h"

namespace ssanet_ops::oriented_pool {
namespace {

void check_cpu_dtype(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.scalar_type() == at::kFloat || tensor.scalar_type() == at::kDouble,
              "oriented_pool: ", name, " must be float32 or float64 on the CPU, got ",
              tensor.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> oriented_pool_forward_cpu(const at::Tensor& x,
                                                             at::IntArrayRef patch_size,
                                                             int64_t grid_size,
                                                             at::IntArrayRef stride) {
  const Geometry g = check_forward_args(x, patch_size, grid_size, stride);
  check_cpu_dtype(x, "x");
  auto [out, argmax] = allocate_outputs(x, g);
  const int64_t batch = x.size(0);
  if (out.numel() == 0) {
    return {out, argmax};
  }
  const Strides4 x_strides = strides_of(x);

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "oriented_pool_forward_cpu", [&] {
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
    uint8_t* argmax_data = argmax.mutable_data_ptr<uint8_t>();
    // One work item per (sample, grid line, channel): h*w cells each.
    const int64_t items = batch * g.grid * g.channels;
    const int64_t grain = std::max<int64_t>(1, 4096 / (g.patch_area() * g.grid + 1));
    at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t c = item % g.channels;
        const int64_t k = (item / g.channels) % g.grid;
        const int64_t b = item / (g.channels * g.grid);
        const scalar_t* sample = x_data + b * x_strides.n;
        scalar_t* out_sample = out_data + b * 4 * g.orientation_length();
        uint8_t* argmax_sample = argmax_data + b * 2 * g.orientation_length();
        for (int64_t dy = 0; dy < g.patch_h; ++dy) {
          for (int64_t dx = 0; dx < g.patch_w; ++dx) {
            forward_cell<scalar_t, scalar_t>(sample, x_strides, g, k, c, dy, dx, out_sample,
                                             argmax_sample);
          }
        }
      }
    });
  });
  return {out, argmax};
}

at::Tensor oriented_pool_backward_cpu(const at::Tensor& grad_output, const at::Tensor& argmax,
                                      at::IntArrayRef patch_size, int64_t grid_size,
                                      at::IntArrayRef stride, int64_t batch, int64_t channels,
                                      int64_t height, int64_t width) {
  const Geometry g = check_backward_args(grad_output, argmax, patch_size, grid_size, stride,
                                         batch, channels, height, width);
  check_cpu_dtype(grad_output, "grad_output");
  at::Tensor grad_input = at::empty({batch, channels, height, width}, grad_output.options());
  if (grad_input.numel() == 0) {
    return grad_input;
  }

  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "oriented_pool_backward_cpu", [&] {
    const scalar_t* grad_data = grad_output.const_data_ptr<scalar_t>();
    const uint8_t* argmax_data = argmax.const_data_ptr<uint8_t>();
    scalar_t* grad_input_data = grad_input.mutable_data_ptr<scalar_t>();
    const int64_t grad_stride_n = grad_output.stride(0);
    const int64_t grad_stride_o = grad_output.stride(1);
    const int64_t grad_stride_l = grad_output.stride(2);
    // One work item per input plane (b, c); each writes only its own plane, so no races.
    const int64_t grain = std::max<int64_t>(1, 4096 / (height * width));
    at::parallel_for(0, batch * channels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % channels;
        const int64_t b = plane / channels;
        const scalar_t* grad_sample = grad_data + b * grad_stride_n;
        const uint8_t* argmax_sample = argmax_data + b * 2 * g.orientation_length();
        scalar_t* grad_plane = grad_input_data + plane * height * width;
        for (int64_t y = 0; y < height; ++y) {
          for (int64_t x = 0; x < width; ++x) {
            grad_plane[y * width + x] = backward_cell<scalar_t, scalar_t>(
                grad_sample, grad_stride_o, grad_stride_l, argmax_sample, g, c, y, x);
          }
        }
      }
    });
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssanet_ops, CPU, m) {
  m.impl("oriented_pool", &oriented_pool_forward_cpu);
  m.impl("_oriented_pool_backward", &oriented_pool_backward_cpu);
}

}  // namespace ssanet_ops::oriented_pool
