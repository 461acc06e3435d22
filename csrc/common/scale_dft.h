#pragma once
// The small real DFT over the S scale candidates of circulant scale alignment (docs/operators.md
// section 3; paper eqs. 6-8), written once for the CPU and the CUDA kernels.
//
// The circulant response corr[n, c, r] = sum_{j,d} phi[n, j, d] * weight[c, (j + r) mod S, d]
// is, per (n, c), the inverse DFT over r of sum_d conj(PHI[n, f, d]) * W[c, f, d], where PHI and
// W are the DFTs over the scale axis (X[f] = sum_j x[j] e^{-2 pi i f j / S}). The data being
// real, the frequencies f = 0..S/2 carry everything: f = 0 (and f = S/2 when S is even) are
// real, the others complex.
//
// Each complex product conj(a + ib) * (c + id) = (ac + bd) + i(ad - bc), summed over d, costs four
// real matrix products; the Gauss trick makes it three:
//   k1 = (a - b) . c,   k2 = a . (d - c),   k3 = (-b) . (c + d);   Re = k1 - k3,  Im = k1 + k2.
// So the DFT writes, per frequency, "planes" that are the operands of those products: a real
// frequency gives one plane (a for phi, c for weight), a complex one three: (a - b, a, -b) for
// phi (kPhiPacking), (c, d - c, c + d) for weight (kWeightPacking). With T planes in all
// (plane_count), the correlation is T real matrix products [N, D] x [D, C], one batched GEMM,
// then the inverse DFT (synthesis) back to the S shifts. At S = 5: 7 products, the direct form 25.
//
// The backward (eq. 8) has the same shape. For a gradient g[n, c, r] over the shifts (one-hot at
// the winning shift for scale_align) with DFT G[f] over r:
//   d PHI[n, f] = sum_c conj(G[n, c, f]) W[c, f]    and    d W[c, f] = sum_n G[n, c, f] PHI[n, f]
// (from sum_j x[(j + r) mod S] e^{-2 pi i f j/S} = e^{+2 pi i f r/S} X[f]). The Gauss trick
// turns each into T real products against the very planes of the forward:
//   d phi:    the planes of G packed as phi is, times the weight planes:
//             k1 = (G_re - G_im) . c,  k2 = G_re . (d - c),  k3 = -G_im . (c + d),
//             d PHI = (k1 - k3) + i (k1 + k2);
//   d weight: the planes of conj(G) packed as weight is, times the phi planes, which gives
//             conj(d W) = conj(G) conj(PHI):
//             k1 = G_re . (a - b),  k2 = (-G_im - G_re) . a,  k3 = (G_re - G_im) . (-b),
//             d W = (k1 - k3) - i (k1 + k2);
// followed by the inverse DFT over the scale axis (synthesis, with `conjugate` for d weight).
//
// The functions are generic in the value type V: a scalar on the GPU (one thread per column), a
// short vector of columns on the CPU. A column is read through x(j) -> V and planes or outputs
// are written through out(index, V). Twiddles cos, sin(2 pi k / S) are computed once per call
// (CPU) or per thread block (CUDA) by `twiddle`.

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "common/macros.h"
#include "common/running_max.h"

namespace ssanet_ops::scale_dft {

// T, the number of product planes for S scales: one per real frequency, three per complex one.
SSANET_HOST_DEVICE int64_t plane_count(int64_t S) {
  const int64_t complex_frequencies = (S - 1) / 2;
  const int64_t real_frequencies = S % 2 == 0 ? 2 : 1;
  return real_frequencies + 3 * complex_frequencies;
}

// Plane order: f = 0 (plane 0), then three planes per complex f (planes 3f - 2 .. 3f), then
// f = S/2 when S is even (plane T - 1).
SSANET_HOST_DEVICE int64_t first_plane(int64_t f) { return f == 0 ? 0 : 3 * f - 2; }

// cos and sin of 2*pi*k/S, exact at multiples of a quarter turn and exactly symmetric
// (k and S - k give the same cosine and opposite sines).
SSANET_HOST_DEVICE void twiddle(int64_t k, int64_t S, double& cosine, double& sine) {
  k %= S;
  const bool mirrored = 2 * k > S;
  const int64_t m = mirrored ? S - k : k;
  if ((4 * m) % S == 0) {
    const int64_t quarter = 4 * m / S;  // 0, 1 or 2
    cosine = quarter == 0 ? 1.0 : (quarter == 1 ? 0.0 : -1.0);
    sine = quarter == 1 ? 1.0 : 0.0;
  } else {
    const double angle = 6.283185307179586476925286766559 * static_cast<double>(m) /
                         static_cast<double>(S);
    cosine = cos(angle);
    sine = sin(angle);
  }
  if (mirrored) {
    sine = -sine;
  }
}

// cos[k], sin[k] = cos, sin(2*pi*k/S) for k = 0..S-1, filled by `twiddle`.
template <typename acc_t>
struct Twiddles {
  const acc_t* cos;
  const acc_t* sin;
  int64_t S;
};

// Entry k of the twiddle tables, for whoever fills them (the host or a thread block).
template <typename acc_t>
SSANET_HOST_DEVICE void fill_twiddle(int64_t k, int64_t S, acc_t* cosines, acc_t* sines) {
  double cosine, sine;
  twiddle(k, S, cosine, sine);
  cosines[k] = static_cast<acc_t>(cosine);
  sines[k] = static_cast<acc_t>(sine);
}

// (k + step) mod S for 0 <= k < S and 0 <= step < S: the next twiddle index of a loop, without
// the division a % would cost in the inner loops.
SSANET_HOST_DEVICE int64_t next_multiple(int64_t k, int64_t step, int64_t S) {
  k += step;
  return k >= S ? k - S : k;
}

// X[f] = sum_j x(j) e^{-2 pi i f j / S} of one column, as (re, im), pairing j with S - j so that
// the sums take half the multiplications.
template <typename V, typename acc_t, typename Column>
SSANET_HOST_DEVICE void dft_at(const Column& x, int64_t f, const Twiddles<acc_t>& tw, V& re,
                               V& im) {
  const int64_t S = tw.S;
  re = x(0);
  im = V{};
  int64_t k = 0;  // (f * j) mod S, kept without a division
  for (int64_t j = 1; 2 * j < S; ++j) {
    k = next_multiple(k, f, S);
    const V first = x(j);
    const V second = x(S - j);
    re += tw.cos[k] * (first + second);
    im -= tw.sin[k] * (first - second);
  }
  if (S % 2 == 0) {
    re += tw.cos[f % 2 == 0 ? 0 : S / 2] * x(S / 2);  // (-1)^f
  }
}

enum Packing : int {
  kPhiPacking,     // (re - im, re, -im)
  kWeightPacking,  // (re, im - re, re + im)
};

// The three planes of complex frequency f (first plane `plane`) from X[f] = re + i im.
template <typename V, typename Out>
SSANET_HOST_DEVICE void pack(Packing packing, int64_t plane, const V& re, const V& im, Out& out) {
  if (packing == kPhiPacking) {
    out(plane, re - im);
    out(plane + 1, re);
    out(plane + 2, V{} - im);
  } else {
    out(plane, re);
    out(plane + 1, im - re);
    out(plane + 2, re + im);
  }
}

// All T planes of one column: the DFT over the scale axis, conjugated if `conjugate`, packed.
template <typename V, typename acc_t, typename Column, typename Out>
SSANET_HOST_DEVICE void planes(Packing packing, bool conjugate, const Column& x,
                               const Twiddles<acc_t>& tw, Out& out) {
  const int64_t S = tw.S;
  for (int64_t f = 0; 2 * f <= S; ++f) {
    V re, im;
    dft_at<V>(x, f, tw, re, im);
    if (f == 0 || 2 * f == S) {
      out(f == 0 ? 0 : plane_count(S) - 1, re);
    } else {
      pack(packing, first_plane(f), re, conjugate ? V{} - im : im, out);
    }
  }
}

// planes() of a gradient that is `grad` at shift `shift` and zero elsewhere (scale_align's
// backward): its DFT is grad * e^{-2 pi i f shift / S}, read off the twiddles.
template <typename V, typename acc_t, typename Out>
SSANET_HOST_DEVICE void one_hot_planes(Packing packing, bool conjugate, const V& grad,
                                       int64_t shift, const Twiddles<acc_t>& tw, Out& out) {
  const int64_t S = tw.S;
  int64_t k = 0;  // (f * shift) mod S
  for (int64_t f = 0; 2 * f <= S; k = next_multiple(k, shift, S), ++f) {
    const V re = tw.cos[k] * grad;
    if (f == 0 || 2 * f == S) {
      out(f == 0 ? 0 : plane_count(S) - 1, re);
    } else {
      const V im = tw.sin[k] * grad;  // the conjugate's imaginary part
      pack(packing, first_plane(f), re, conjugate ? im : V{} - im, out);
    }
  }
}

// The inverse DFT at scale (or shift) j from the T products K(p), where each complex frequency's
// products k1, k2, k3 give Re = k1 - k3 and Im = k1 + k2 (negated if `conjugate`):
//   x[j] = (1/S) (Re_0 + 2 sum_f (Re_f cos - Im_f sin)(2 pi f j/S) + Re_{S/2} (-1)^j).
// Returned as the part even in j (`even`) and the odd part (`odd`): x[j] = even + odd and
// x[S - j] = even - odd.
template <typename V, typename acc_t, typename Products>
SSANET_HOST_DEVICE void synthesis_at(const Products& K, bool conjugate, int64_t j,
                                     const Twiddles<acc_t>& tw, V& even, V& odd) {
  const int64_t S = tw.S;
  const int64_t T = plane_count(S);
  V cosine_sum = V{};
  V sine_sum = V{};
  int64_t k = 0;  // (f * j) mod S
  for (int64_t f = 1; 2 * f < S; ++f) {
    k = next_multiple(k, j, S);
    const int64_t p = first_plane(f);
    const V k1 = K(p);
    const V re = k1 - K(p + 2);
    const V im = k1 + K(p + 1);
    cosine_sum += tw.cos[k] * re;
    sine_sum += tw.sin[k] * im;
  }
  const acc_t inverse_S = acc_t(1) / static_cast<acc_t>(S);
  const acc_t twice_inverse_S = acc_t(2) / static_cast<acc_t>(S);
  V real_part = K(0);
  if (S % 2 == 0) {
    real_part += tw.cos[j % 2 == 0 ? 0 : S / 2] * K(T - 1);  // (-1)^j
  }
  even = inverse_S * real_part + twice_inverse_S * cosine_sum;
  odd = (conjugate ? twice_inverse_S : -twice_inverse_S) * sine_sum;
}

// All S values of one column, out(j, x[j]), from its T products; j and S - j share one pass.
template <typename V, typename acc_t, typename Products, typename Out>
SSANET_HOST_DEVICE void synthesis(const Products& K, bool conjugate, const Twiddles<acc_t>& tw,
                                  Out& out) {
  const int64_t S = tw.S;
  for (int64_t j = 0; 2 * j <= S; ++j) {
    V even, odd;
    synthesis_at<V>(K, conjugate, j, tw, even, odd);
    out(j, even + odd);
    if (j != 0 && 2 * j != S) {
      out(S - j, even - odd);
    }
  }
}

// The machine epsilon of the accumulation type, the unit of the tie tolerance below.
template <typename acc_t>
SSANET_HOST_DEVICE acc_t epsilon();
template <>
SSANET_HOST_DEVICE float epsilon<float>() {
  return FLT_EPSILON;
}
template <>
SSANET_HOST_DEVICE double epsilon<double>() {
  return DBL_EPSILON;
}

// tol[n, c] = 8 * S * eps * ||phi[n]|| * ||weight[c]|| (docs/operators.md section 3): responses closer to
// the maximum than this count as tied. The Fourier form leaves exact ties a few roundings of
// the products' size apart, and |corr| <= ||phi[n]|| * ||weight[c]|| (Cauchy-Schwarz; a shift
// only permutes phi's rows), so the bound covers them whatever the device's rounding.
template <typename acc_t>
SSANET_HOST_DEVICE acc_t tie_tolerance(int64_t S, acc_t phi_norm, acc_t weight_norm) {
  return acc_t(8) * static_cast<acc_t>(S) * epsilon<acc_t>() * phi_norm * weight_norm;
}

// The forward epilogue of scale_align for one (n, c) (docs/operators.md section 3): from its T
// products K(p), the maximum response into `value` and the shift, which it returns (the bias is
// the caller's: neither depends on it, issue 12). The value is the maximum as computed, whatever
// the shift: the tolerance only decides which of the shifts tied with the maximum is reported
// (the lowest r with corr[r] >= max - tolerance) and carries the gradient, never the logit
// (issue 20). When nothing compares so (a NaN maximum or tolerance), the shift is the first
// maximum, as torch.max gives it (a NaN propagates).
template <typename acc_t, typename Products>
SSANET_HOST_DEVICE int64_t align_point(const Products& K, const Twiddles<acc_t>& tw,
                                       acc_t tolerance, acc_t& value) {
  const auto corr = [&](int64_t r) {
    acc_t even, odd;
    synthesis_at<acc_t>(K, /*conjugate=*/false, r, tw, even, odd);
    return even + odd;
  };
  acc_t best = corr(0);
  int64_t best_shift = 0;
  for (int64_t r = 1; r < tw.S; ++r) {
    const acc_t response = corr(r);
    if (replaces_max(response, best)) {
      best = response;
      best_shift = r;
    }
  }
  value = best;
  // The responses below the best are recomputed: the same arithmetic as above, and any
  // difference a compiler's contraction might make is a rounding, far below the tolerance.
  for (int64_t r = 0; r < best_shift; ++r) {
    if (corr(r) >= best - tolerance) {
      return r;
    }
  }
  return best_shift;
}

}  // namespace ssanet_ops::scale_dft
