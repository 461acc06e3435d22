#pragma once
// Overflow-safe int64 arithmetic for the host checks that guard direct torch.ops calls
// (docs/operators.md section 4; issue 12 item 7): a size check whose product or sum overflows int64
// passes for hostile arguments and lets a kernel index out of bounds. Write the checked
// expression with Checked and compare it; an overflow anywhere fails every comparison:
//   SSANET_CHECK(Checked(grid - 1) * stride + patch <= height, ...)

#include <cstdint>

namespace ssanet_ops {

class Checked {
 public:
  constexpr Checked(int64_t value) : value_(value) {}  // NOLINT: implicit, to mix with int64_t

  // Whether no step overflowed; value() is meaningful only then.
  constexpr bool valid() const { return valid_; }
  constexpr int64_t value() const { return value_; }

  friend constexpr Checked operator+(Checked a, Checked b) {
    Checked sum(0);
    sum.valid_ = a.valid_ && b.valid_ && !__builtin_add_overflow(a.value_, b.value_, &sum.value_);
    return sum;
  }
  friend constexpr Checked operator-(Checked a, Checked b) {
    Checked difference(0);
    difference.valid_ =
        a.valid_ && b.valid_ && !__builtin_sub_overflow(a.value_, b.value_, &difference.value_);
    return difference;
  }
  friend constexpr Checked operator*(Checked a, Checked b) {
    Checked product(0);
    product.valid_ =
        a.valid_ && b.valid_ && !__builtin_mul_overflow(a.value_, b.value_, &product.value_);
    return product;
  }
  friend constexpr bool operator<=(Checked a, Checked b) {
    return a.valid_ && b.valid_ && a.value_ <= b.value_;
  }
  friend constexpr bool operator==(Checked a, Checked b) {
    return a.valid_ && b.valid_ && a.value_ == b.value_;
  }

 private:
  int64_t value_;
  bool valid_ = true;
};

}  // namespace ssanet_ops
