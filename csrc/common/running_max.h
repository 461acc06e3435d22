#pragma once
// The running maximum every kernel uses (docs/operators.md sections 1 and 3), written once.

#include "common/macros.h"

namespace ssanet_ops {

// A strictly larger value replaces the best (so ties keep the lowest index or shift), and a NaN
// replaces a number (NaN propagates, as in torch.amax and torch.max) but not an earlier NaN.
// Bitwise operators, not && and ||: the max of random data is unpredictable, and branch-free
// selects keep the CPU from mispredicting on every comparison.
template <typename acc_t>
SSANET_HOST_DEVICE bool replaces_max(acc_t candidate, acc_t best) {
  return (candidate > best) | ((candidate != candidate) & (best == best));
}

}  // namespace ssanet_ops
