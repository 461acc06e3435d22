// scale_candidates and multiscale_roi_crop on the CPU.
//
// The crop uses that roi_align's sample weights are a product of a y factor and an x factor
// (common/bilinear.h). For each candidate a thread builds, once, a sparse table per axis of
// the map rows (columns) each output row (column) reads, with their weights, and reuses it for
// every channel. An output row is then two passes: the map rows it reads are summed with their
// weights over the candidate's column span (a contiguous, vectorizable loop), then each output
// sums its columns of that line. With few channels (images) the passes run on one [H, W] plane
// at a time, in parallel over (candidate, channel); with many (feature maps) they run on
// channels-last copies of chunks of channels, each tap a multiply-add over the chunk, in
// parallel over (image, chunk). The backward runs the transposed tables (built with the weight
// functions the CUDA gather uses) in parallel over (image, channel or chunk): each thread owns
// its part of the input gradient and adds the candidates of that image in index order, so the
// result does not depend on the number of threads. Each pass is one parallel region.
// float16 and bfloat16 run these float32 kernels (opmath_t, as on CUDA they accumulate
// in float32): the map or gradient is converted once on the way in and the result on the way out.

#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include "roi_crop/arguments.h"

// float32 and float64, the types these kernels run in; the body sees scalar_t.
#define DISPATCH_CPU_TYPES(TYPE, NAME, ...) \
  THO_DISPATCH_V2(TYPE, NAME, AT_WRAP(__VA_ARGS__), AT_EXPAND(AT_FLOATING_TYPES))

namespace ssanet_ops::roi_crop {
namespace {

// With many channels the crop runs on channels-last data, in chunks of channels, when a
// thread's buffers for a chunk (an output crop, a map) stay small; otherwise plane by plane.
constexpr int64_t kChannelsLastFrom = 16;
constexpr int64_t kChannelChunk = 64;
constexpr int64_t kMaxChunkBuffer = int64_t{1} << 20;  // elements

template <typename T>
bool uses_channels_last(const CropParams<T>& p) {
  return p.channels >= kChannelsLastFrom && p.cells() <= kMaxChunkBuffer / kChannelChunk &&
         p.height * p.width <= kMaxChunkBuffer / kChannelChunk;
}

// Checks every box (and given centre) with the shared rules; batch < 0: B not known.
template <typename T>
void check_box_values(const T* boxes, int64_t count, int64_t batch, const T* centers,
                      int64_t center_rows, const char* op) {
  int errors = 0;
  for (int64_t k = 0; k < count; ++k) {
    errors |= check_box(boxes, k, batch);
  }
  for (int64_t b = 0; centers != nullptr && b < center_rows; ++b) {
    errors |= check_center(centers, b);
  }
  report_box_errors(errors, batch, op);
}

// The boxes grouped by image (batch < 0: B not known), once check_box_values has passed: every
// box has an image and every given centre is finite, so image_key needs no centres.
template <typename T>
ImageSegments image_segments(const Tensor& boxes, int64_t batch) {
  const int64_t count = boxes.size(0);
  Tensor keys = empty_like_device(boxes, {count}, ScalarType::Long);
  const T* box_data = boxes.const_data_ptr<T>();
  int64_t* key_data = keys.mutable_data_ptr<int64_t>();
  for (int64_t k = 0; k < count; ++k) {
    key_data[k] = image_key(box_data, static_cast<const T*>(nullptr), k, batch);
  }
  ImageSegments segments = sort_by_image(keys);
  if (batch >= 0) {
    segments.offsets = empty_like_device(keys, {batch + 1});
    const int64_t* sorted = segments.sorted.const_data_ptr<int64_t>();
    int64_t* offsets = segments.offsets.mutable_data_ptr<int64_t>();
    for (int64_t b = 0; b <= batch; ++b) {
      offsets[b] = first_of_image(sorted, count, b);
    }
  }
  return segments;
}

// [K, 2] float64: 2c of every box's image, from the given centres or, when there are none,
// the mean over the image's boxes (docs/operators.md section 2), each image summed once.
template <typename T>
Tensor box_centers(const Tensor& boxes, const ImageSegments& segments, const Tensor& centers) {
  const int64_t count = boxes.size(0);
  Tensor result = zeros_like_device(boxes, {count, 2}, ScalarType::Double);
  double* twice_centers = result.mutable_data_ptr<double>();
  const T* box_data = boxes.const_data_ptr<T>();
  for (int64_t k = 0; k < count; ++k) {
    if (centers.defined()) {
      spread_given_center(centers.const_data_ptr<T>(), segments.keys.const_data_ptr<int64_t>(),
                          k, twice_centers);
    } else {
      spread_image_center(box_data, segments.order.const_data_ptr<int64_t>(),
                          segments.sorted.const_data_ptr<int64_t>(), count, k, twice_centers);
    }
  }
  return result;
}

Tensor scale_candidates_cpu(const Tensor& boxes, DoubleArrayRef scales,
                            const std::optional<Tensor>& centers, double image_height,
                            double image_width, bool clip) {
  auto [out, boxes_c, centers_c, batch] =
      prepare_candidates(boxes, scales, centers, image_height, image_width);
  const int64_t count = boxes.size(0);
  const int64_t S = static_cast<int64_t>(scales.size());
  if (count == 0) {
    return out;
  }

  DISPATCH_CPU_TYPES(boxes.scalar_type(), "scale_candidates_cpu", [&] {
    const scalar_t* box_data = boxes_c.const_data_ptr<scalar_t>();
    check_box_values(box_data, count, batch,
                     centers_c.defined() ? centers_c.const_data_ptr<scalar_t>() : nullptr,
                     centers_c.defined() ? batch : 0, kCandidatesOp);
    const Tensor twice_centers =
        box_centers<scalar_t>(boxes_c, image_segments<scalar_t>(boxes_c, batch), centers_c);
    const double* center_data = twice_centers.const_data_ptr<double>();
    const auto height = static_cast<scalar_t>(image_height);
    const auto width = static_cast<scalar_t>(image_width);
    scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
    for (int64_t k = 0; k < count; ++k) {
      const Box<scalar_t> box = box_at(box_data, k);
      const Anchors anchors = anchor_corners(box, twice_center_of(center_data, k));
      for (int64_t s = 0; s < S; ++s) {
        const Box<scalar_t> candidate =
            candidate_box(box, anchors, static_cast<scalar_t>(scales[s]), clip, height, width);
        scalar_t* row = out_data + (k * S + s) * 4;
        row[0] = candidate.x1;
        row[1] = candidate.y1;
        row[2] = candidate.x2;
        row[3] = candidate.y2;
      }
    }
  });
  return out;
}

// A sparse matrix by rows: row r (numbered from `first`) holds the entries
// [begin[r], begin[r + 1]) of (index, weight).
template <typename T>
struct SparseRows {
  int64_t first = 0;
  std::vector<int64_t> begin{0};
  std::vector<int64_t> index;
  std::vector<T> weight;

  int64_t rows() const { return static_cast<int64_t>(begin.size()) - 1; }
};

// Forward table of one axis: row p (an output) lists the map indices its samples read, with
// their weights; a repeated index (two neighbouring samples sharing a pixel) is merged.
// [low, high] is the span of map indices read (empty when low > high).
template <typename T>
SparseRows<T> sample_taps(const AxisGrid<T>& axis, int64_t& low, int64_t& high) {
  SparseRows<T> rows;
  low = std::numeric_limits<int64_t>::max();
  high = -1;
  auto add = [&](int64_t i, T w) {
    if (static_cast<int64_t>(rows.index.size()) > rows.begin.back() && rows.index.back() == i) {
      rows.weight.back() += w;
    } else {
      rows.index.push_back(i);
      rows.weight.push_back(w);
    }
    low = std::min(low, i);
    high = std::max(high, i);
  };
  for (int64_t p = 0; p < axis.outputs; ++p) {
    for (int64_t i = 0; i < axis.grid; ++i) {
      Tap<T> tap;
      if (axis_tap(axis.sample(p, i), axis.size, tap)) {
        add(tap.low, tap.w_low);
        add(tap.high, tap.w_high);
      }
    }
    rows.begin.push_back(static_cast<int64_t>(rows.index.size()));
  }
  return rows;
}

// Backward table of one axis, the transpose: row r (a map index, from `first`) lists the
// outputs whose samples reach it, with weight_to's weights; rows before the first and after
// the last reached index are left out.
template <typename T>
SparseRows<T> reaching_taps(const AxisGrid<T>& axis) {
  SparseRows<T> rows;
  bool started = false;
  for (int64_t r = 0; r < axis.size; ++r) {
    int64_t first, last;
    outputs_reaching(axis, r, first, last);
    const size_t before = rows.index.size();
    for (int64_t p = first; p <= last; ++p) {
      const T w = weight_to(axis, p, r);
      if (w != T(0)) {
        rows.index.push_back(p);
        rows.weight.push_back(w);
      }
    }
    if (!started) {
      if (rows.index.size() == before) {
        continue;
      }
      started = true;
      rows.first = r;
    }
    rows.begin.push_back(static_cast<int64_t>(rows.index.size()));
  }
  while (rows.rows() > 0 && rows.begin[rows.begin.size() - 1] == rows.begin[rows.begin.size() - 2]) {
    rows.begin.pop_back();
  }
  return rows;
}

// What both passes need per candidate: its sample grid, and the candidates of each image in
// index order (the fixed order of the backward's sums).
template <typename T>
struct Candidates {
  std::vector<RoiGrid<T>> grid;
  std::vector<int64_t> image;                   // of each candidate
  std::vector<std::vector<int64_t>> of_image;  // [B]: candidate indices
};

template <typename T>
Candidates<T> candidate_grids(const CropParams<T>& p, const Tensor& boxes,
                              const Tensor& centers, DoubleArrayRef scales) {
  const T* box_data = boxes.const_data_ptr<T>();
  check_box_values(box_data, p.boxes, p.batch,
                   centers.defined() ? centers.const_data_ptr<T>() : nullptr,
                   centers.defined() ? p.batch : 0, kCropOp);
  const ImageSegments segments = image_segments<T>(boxes, p.batch);
  const Tensor twice_centers = box_centers<T>(boxes, segments, centers);
  const double* center_data = twice_centers.const_data_ptr<double>();
  const int64_t* keys = segments.keys.const_data_ptr<int64_t>();
  const int64_t* order = segments.order.const_data_ptr<int64_t>();
  const int64_t* offsets = segments.offsets.const_data_ptr<int64_t>();
  Candidates<T> result;
  result.grid.resize(p.candidates());
  result.image.resize(p.candidates());
  result.of_image.resize(p.batch);
  for (int64_t k = 0; k < p.boxes; ++k) {
    const Box<T> box = box_at(box_data, k);
    for (int64_t s = 0; s < p.scales; ++s) {
      result.image[k * p.scales + s] = keys[k];
      result.grid[k * p.scales + s] =
          candidate_grid(p, box, twice_center_of(center_data, k), static_cast<T>(scales[s]));
    }
  }
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t i = offsets[b]; i < offsets[b + 1]; ++i) {
      for (int64_t s = 0; s < p.scales; ++s) {
        result.of_image[b].push_back(order[i] * p.scales + s);
      }
    }
  }
  return result;
}

// The forward tables of one candidate: its output rows' map rows, its output columns' map
// columns, and the span [column_low, column_high] of map columns they read.
template <typename T>
struct ForwardTables {
  SparseRows<T> rows, columns;
  int64_t column_low = 0, column_high = -1;

  explicit ForwardTables(const RoiGrid<T>& grid) {
    int64_t row_low, row_high;
    rows = sample_taps(grid.y, row_low, row_high);
    columns = sample_taps(grid.x, column_low, column_high);
  }

  int64_t span() const { return column_high - column_low + 1; }  // <= 0: reads nothing
};

// The backward tables of the candidates of one image, in index order.
template <typename T>
struct ImageBackwardTables {
  int64_t image = -1;
  std::vector<SparseRows<T>> rows, columns;

  void build(const Candidates<T>& candidates, const std::vector<int64_t>& of_image, int64_t b) {
    rows.clear();
    columns.clear();
    for (const int64_t n : of_image) {
      rows.push_back(reaching_taps(candidates.grid[n].y));
      columns.push_back(reaching_taps(candidates.grid[n].x));
    }
    image = b;
  }
};

// One output plane of a candidate: each output row sums the map rows its samples read into
// `line` (weighted), then each output cell sums the columns of `line` its samples read; the
// mean over the samples is the sum times inverse_count. Not inlined: compiled inside the
// parallel_for callback (with the table building around it), the column loop ran short of
// registers and reloaded its pointers from the stack on every sample, 17 % slower than before
// the port to the stable ABI (benchmarks/results/stable_abi_port.md).
template <typename T>
[[gnu::noinline]] void crop_plane(const T* __restrict map, int64_t width,
                                  const ForwardTables<T>& tables, T inverse_count, int64_t out_h,
                                  int64_t out_w, T* __restrict line, T* __restrict out) {
  const int64_t* __restrict row_begin = tables.rows.begin.data();
  const int64_t* __restrict row_index = tables.rows.index.data();
  const T* __restrict row_weight = tables.rows.weight.data();
  const int64_t* __restrict column_begin = tables.columns.begin.data();
  const int64_t* __restrict column_index = tables.columns.index.data();
  const T* __restrict column_weight = tables.columns.weight.data();
  const int64_t low = tables.column_low;
  const int64_t span = tables.span();
  for (int64_t ph = 0; ph < out_h; ++ph) {
    T* __restrict out_row = out + ph * out_w;
    const int64_t e0 = row_begin[ph], e1 = row_begin[ph + 1];
    if (e0 == e1 || span <= 0) {
      std::fill(out_row, out_row + out_w, T(0));
      continue;
    }
    std::fill(line, line + span, T(0));
    for (int64_t e = e0; e < e1; ++e) {
      const T* __restrict source = map + row_index[e] * width + low;
      const T w = row_weight[e];
      for (int64_t j = 0; j < span; ++j) {
        line[j] += w * source[j];
      }
    }
    for (int64_t pw = 0; pw < out_w; ++pw) {
      T total = 0;
      for (int64_t f = column_begin[pw]; f < column_begin[pw + 1]; ++f) {
        total += column_weight[f] * line[column_index[f] - low];
      }
      out_row[pw] = total * inverse_count;
    }
  }
}

// Few channels (images): one plane per item. input: contiguous [B, C, H, W].
template <typename T>
void crop_forward_planar(const CropParams<T>& p, const Candidates<T>& candidates,
                         const T* input, T* output) {
  const int64_t plane = p.height * p.width;
  const int64_t grain = std::max<int64_t>(1, 16384 / (p.cells() + 1));
  // Items (candidate, channel), candidate-major: a thread builds the tables of the candidates
  // its items belong to once, when it reaches the first of their channels.
  parallel_for(0, p.candidates() * p.channels, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> line(p.width);  // weighted sum of map rows over the column span
    std::optional<ForwardTables<T>> tables;
    int64_t tables_of = -1;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / p.channels;
      const int64_t c = item % p.channels;
      if (n != tables_of) {
        tables.emplace(candidates.grid[n]);
        tables_of = n;
      }
      const T* map = input + (candidates.image[n] * p.channels + c) * plane;
      crop_plane(map, p.width, *tables, T(1) / candidates.grid[n].count, p.out_h, p.out_w,
                 line.data(), output + item * p.cells());
    }
  });
}

// Few channels: one input plane (image, channel) per item; each thread owns its planes, so
// the sums run in a fixed order whatever the number of threads. grad: contiguous
// [N, C, oh, ow]; grad_input: contiguous [B, C, H, W].
template <typename T>
void crop_backward_planar(const CropParams<T>& p, const Candidates<T>& candidates,
                          const T* grad, T* grad_input) {
  const std::vector<std::vector<int64_t>>& of_image = candidates.of_image;
  const int64_t plane = p.height * p.width;
  const int64_t grain = std::max<int64_t>(1, 16384 / (plane + 1));
  // Items are input planes, image-major: a thread builds an image's tables once.
  parallel_for(0, p.batch * p.channels, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> line(p.out_w);  // one map row's weighted sum of output rows
    ImageBackwardTables<T> tables;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / p.channels;
      const int64_t c = item % p.channels;
      if (b != tables.image) {
        tables.build(candidates, of_image[b], b);
      }
      T* map = grad_input + item * plane;
      std::fill(map, map + plane, T(0));
      for (size_t m = 0; m < of_image[b].size(); ++m) {
        const int64_t n = of_image[b][m];
        const T* g = grad + (n * p.channels + c) * p.cells();
        const SparseRows<T>& y = tables.rows[m];
        const SparseRows<T>& x = tables.columns[m];
        const T inverse_count = T(1) / candidates.grid[n].count;
        for (int64_t r = 0; r < y.rows() && x.rows() > 0; ++r) {
          const int64_t e0 = y.begin[r], e1 = y.begin[r + 1];
          if (e0 == e1) {
            continue;
          }
          std::fill(line.begin(), line.end(), T(0));
          for (int64_t e = e0; e < e1; ++e) {
            const T* source = g + y.index[e] * p.out_w;
            const T w = y.weight[e] * inverse_count;
            for (int64_t pw = 0; pw < p.out_w; ++pw) {
              line[pw] += w * source[pw];
            }
          }
          T* map_row = map + (y.first + r) * p.width + x.first;
          for (int64_t column = 0; column < x.rows(); ++column) {
            T total = 0;
            for (int64_t f = x.begin[column]; f < x.begin[column + 1]; ++f) {
              total += x.weight[f] * line[x.index[f]];
            }
            map_row[column] += total;
          }
        }
      }
    }
  });
}

// Channels per chunk of the channels-last kernels: 16 to kChannelChunk, small enough that
// every thread gets a few (image, chunk) items. Each channel's arithmetic is the same whatever
// the chunk, so the results do not depend on it.
template <typename T>
int64_t channel_chunk(const CropParams<T>& p) {
  const auto threads = static_cast<int64_t>(torch::stable::get_num_threads());
  const int64_t wanted_chunks = (4 * threads + p.batch - 1) / p.batch;
  const int64_t chunk = (p.channels + wanted_chunks - 1) / wanted_chunks;
  return std::clamp<int64_t>(chunk, std::min<int64_t>(kChannelsLastFrom, p.channels),
                             kChannelChunk);
}

// Many channels (feature maps): the same two passes on channels-last data, so that every tap
// is a contiguous multiply-add over a chunk of channels. Items (image, chunk): a thread copies
// the chunk of the image (input of any strides) to a [H][W][channel] block, then crops every
// candidate of the image from it, with the image's tables built once per thread.
template <typename T>
void crop_forward_channels_last(const CropParams<T>& p, const Candidates<T>& candidates,
                                const Tensor& input, T* output) {
  const std::vector<std::vector<int64_t>>& of_image = candidates.of_image;
  const int64_t chunk = channel_chunk(p);
  const int64_t chunks = (p.channels + chunk - 1) / chunk;
  const int64_t plane = p.height * p.width;
  const T* source = input.const_data_ptr<T>();
  const int64_t stride_n = input.stride(0), stride_c = input.stride(1);
  const int64_t stride_h = input.stride(2), stride_w = input.stride(3);
  parallel_for(0, p.batch * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> block(plane * chunk);      // [H][W][channel]
    std::vector<T> line(p.width * chunk);     // [column][channel] over the column span
    std::vector<T> cells(p.cells() * chunk);  // [oh][ow][channel]
    std::vector<ForwardTables<T>> tables;
    int64_t tables_of = -1;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / chunks;
      const int64_t c0 = (item % chunks) * chunk;
      const int64_t width = std::min(chunk, p.channels - c0);  // channels in this chunk
      if (of_image[b].empty()) {
        continue;
      }
      if (b != tables_of) {
        tables.clear();
        for (const int64_t n : of_image[b]) {
          tables.emplace_back(candidates.grid[n]);
        }
        tables_of = b;
      }
      for (int64_t cc = 0; cc < width; ++cc) {
        const T* map = source + b * stride_n + (c0 + cc) * stride_c;
        for (int64_t y = 0; y < p.height; ++y) {
          for (int64_t x = 0; x < p.width; ++x) {
            block[(y * p.width + x) * width + cc] = map[y * stride_h + x * stride_w];
          }
        }
      }
      for (size_t m = 0; m < of_image[b].size(); ++m) {
        const int64_t n = of_image[b][m];
        const SparseRows<T>& y = tables[m].rows;
        const SparseRows<T>& x = tables[m].columns;
        const int64_t low = tables[m].column_low;
        const int64_t span = tables[m].span();
        const T inverse_count = T(1) / candidates.grid[n].count;
        std::fill(cells.begin(), cells.end(), T(0));
        for (int64_t ph = 0; ph < p.out_h && span > 0; ++ph) {
          const int64_t e0 = y.begin[ph], e1 = y.begin[ph + 1];
          if (e0 == e1) {
            continue;
          }
          const int64_t length = span * width;
          std::fill(line.begin(), line.begin() + length, T(0));
          for (int64_t e = e0; e < e1; ++e) {
            const T w = y.weight[e];
            const T* row = block.data() + (y.index[e] * p.width + low) * width;
            for (int64_t j = 0; j < length; ++j) {
              line[j] += w * row[j];
            }
          }
          for (int64_t pw = 0; pw < p.out_w; ++pw) {
            T* cell = cells.data() + (ph * p.out_w + pw) * width;
            for (int64_t f = x.begin[pw]; f < x.begin[pw + 1]; ++f) {
              const T w = x.weight[f] * inverse_count;
              const T* column = line.data() + (x.index[f] - low) * width;
              for (int64_t cc = 0; cc < width; ++cc) {
                cell[cc] += w * column[cc];
              }
            }
          }
        }
        T* out = output + (n * p.channels + c0) * p.cells();
        for (int64_t cc = 0; cc < width; ++cc) {
          for (int64_t cell = 0; cell < p.cells(); ++cell) {
            out[cc * p.cells() + cell] = cells[cell * width + cc];
          }
        }
      }
    }
  });
}

// Many channels: items (image, channel chunk), image-major; each item owns its chunk of the
// image's gradient and adds the candidates in index order. grad: contiguous [N, C, oh, ow];
// grad_input: contiguous [B, C, H, W].
template <typename T>
void crop_backward_channels_last(const CropParams<T>& p, const Candidates<T>& candidates,
                                 const T* grad, T* grad_input) {
  const std::vector<std::vector<int64_t>>& of_image = candidates.of_image;
  const int64_t chunk = channel_chunk(p);
  const int64_t chunks = (p.channels + chunk - 1) / chunk;
  const int64_t plane = p.height * p.width;
  parallel_for(0, p.batch * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> cells(p.cells() * chunk);      // a candidate's gradient, [oh][ow][channel]
    std::vector<T> line(p.out_w * chunk);         // [ow][channel] for one map row
    std::vector<T> accumulated(plane * chunk);  // the chunk's gradient, [H][W][channel]
    ImageBackwardTables<T> tables;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / chunks;
      const int64_t c0 = (item % chunks) * chunk;
      const int64_t width = std::min(chunk, p.channels - c0);
      if (b != tables.image) {
        tables.build(candidates, of_image[b], b);
      }
      std::fill(accumulated.begin(), accumulated.end(), T(0));
      for (size_t m = 0; m < of_image[b].size(); ++m) {
        const int64_t n = of_image[b][m];
        const SparseRows<T>& y = tables.rows[m];
        const SparseRows<T>& x = tables.columns[m];
        if (y.rows() == 0 || x.rows() == 0) {
          continue;
        }
        const T inverse_count = T(1) / candidates.grid[n].count;
        const T* g = grad + (n * p.channels + c0) * p.cells();
        for (int64_t cc = 0; cc < width; ++cc) {
          for (int64_t cell = 0; cell < p.cells(); ++cell) {
            cells[cell * width + cc] = g[cc * p.cells() + cell] * inverse_count;
          }
        }
        for (int64_t r = 0; r < y.rows(); ++r) {
          const int64_t e0 = y.begin[r], e1 = y.begin[r + 1];
          if (e0 == e1) {
            continue;
          }
          std::fill(line.begin(), line.begin() + p.out_w * width, T(0));
          for (int64_t e = e0; e < e1; ++e) {
            const T w = y.weight[e];
            const T* source = cells.data() + y.index[e] * p.out_w * width;
            for (int64_t j = 0; j < p.out_w * width; ++j) {
              line[j] += w * source[j];
            }
          }
          T* row = accumulated.data() + ((y.first + r) * p.width + x.first) * width;
          for (int64_t column = 0; column < x.rows(); ++column) {
            T* target = row + column * width;
            for (int64_t f = x.begin[column]; f < x.begin[column + 1]; ++f) {
              const T w = x.weight[f];
              const T* source = line.data() + x.index[f] * width;
              for (int64_t cc = 0; cc < width; ++cc) {
                target[cc] += w * source[cc];
              }
            }
          }
        }
      }
      T* out = grad_input + (b * p.channels + c0) * plane;
      for (int64_t cc = 0; cc < width; ++cc) {
        for (int64_t i = 0; i < plane; ++i) {
          out[cc * plane + i] = accumulated[i * width + cc];
        }
      }
    }
  });
}

Tensor multiscale_roi_crop_cpu(const Tensor& input, const Tensor& boxes, DoubleArrayRef scales,
                               const std::optional<Tensor>& centers, IntArrayRef output_size,
                               double spatial_scale, int64_t sampling_ratio, bool aligned,
                               bool clip) {
  const CropShape shape =
      check_crop_args(input, boxes, scales, centers, output_size, spatial_scale, sampling_ratio,
                      kCropOp);
  check_floating_dtype(input, "input", kCropOp);
  if (is_reduced_precision(input.scalar_type())) {
    const Tensor output =
        multiscale_roi_crop_cpu(torch::stable::to(input, ScalarType::Float), boxes, scales,
                                centers, output_size, spatial_scale, sampling_ratio, aligned, clip);
    return torch::stable::to(output, input.scalar_type());
  }
  const int64_t K = boxes.size(0);
  const int64_t S = static_cast<int64_t>(scales.size());
  Tensor output = empty_like_device(input, {K, S, input.size(1), shape.out_h, shape.out_w});
  if (K == 0) {
    return output;
  }
  const Tensor boxes_c = torch::stable::contiguous(boxes);
  const Tensor centers_c = centers.has_value() ? torch::stable::contiguous(*centers) : Tensor();

  DISPATCH_CPU_TYPES(input.scalar_type(), "multiscale_roi_crop_cpu", [&] {
    const auto p = crop_params<scalar_t>(K, S, input.size(0), input.size(1), input.size(2),
                                         input.size(3), shape, spatial_scale, sampling_ratio,
                                         aligned, clip);
    const Candidates<scalar_t> candidates = candidate_grids(p, boxes_c, centers_c, scales);
    if (output.numel() == 0) {
      return;
    }
    if (uses_channels_last(p)) {
      crop_forward_channels_last(p, candidates, input, output.mutable_data_ptr<scalar_t>());
    } else {
      const Tensor input_c = torch::stable::contiguous(input);
      crop_forward_planar(p, candidates, input_c.const_data_ptr<scalar_t>(),
                          output.mutable_data_ptr<scalar_t>());
    }
  });
  return output;
}

// deterministic: the CPU backward has one path, deterministic (see the top of this file).
Tensor multiscale_roi_crop_backward_cpu(const Tensor& grad_output, const Tensor& boxes,
                                        DoubleArrayRef scales,
                                        const std::optional<Tensor>& centers,
                                        IntArrayRef output_size, double spatial_scale,
                                        int64_t sampling_ratio, bool aligned, bool clip,
                                        int64_t batch, int64_t channels, int64_t height,
                                        int64_t width, bool /*deterministic*/) {
  const CropShape shape =
      check_crop_backward_args(grad_output, boxes, scales, centers, output_size, spatial_scale,
                               sampling_ratio, batch, channels, height, width, kCropOp);
  check_floating_dtype(grad_output, "grad_output", kCropOp);
  if (is_reduced_precision(grad_output.scalar_type())) {
    const Tensor grad_input = multiscale_roi_crop_backward_cpu(
        torch::stable::to(grad_output, ScalarType::Float), boxes, scales, centers, output_size,
        spatial_scale, sampling_ratio, aligned, clip, batch, channels, height, width, true);
    return torch::stable::to(grad_input, grad_output.scalar_type());
  }
  Tensor grad_input = empty_like_device(grad_output, {batch, channels, height, width});
  if (grad_input.numel() == 0) {
    return grad_input;
  }
  const int64_t K = boxes.size(0);
  const int64_t S = static_cast<int64_t>(scales.size());
  const Tensor grad_c = torch::stable::contiguous(grad_output);
  const Tensor boxes_c = torch::stable::contiguous(boxes);
  const Tensor centers_c = centers.has_value() ? torch::stable::contiguous(*centers) : Tensor();

  DISPATCH_CPU_TYPES(grad_output.scalar_type(), "multiscale_roi_crop_backward_cpu", [&] {
    const auto p = crop_params<scalar_t>(K, S, batch, channels, height, width, shape,
                                         spatial_scale, sampling_ratio, aligned, clip);
    const Candidates<scalar_t> candidates = candidate_grids(p, boxes_c, centers_c, scales);
    if (uses_channels_last(p)) {
      crop_backward_channels_last(p, candidates, grad_c.const_data_ptr<scalar_t>(),
                                  grad_input.mutable_data_ptr<scalar_t>());
    } else {
      crop_backward_planar(p, candidates, grad_c.const_data_ptr<scalar_t>(),
                           grad_input.mutable_data_ptr<scalar_t>());
    }
  });
  return grad_input;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ssanet_ops, CPU, m) {
  m.impl("scale_candidates", TORCH_BOX(&scale_candidates_cpu));
  m.impl("multiscale_roi_crop", TORCH_BOX(&multiscale_roi_crop_cpu));
  m.impl("_multiscale_roi_crop_backward", TORCH_BOX(&multiscale_roi_crop_backward_cpu));
}

}  // namespace ssanet_ops::roi_crop
