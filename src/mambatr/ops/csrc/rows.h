// Row view of a (batch, length, width) array whose last dimension is contiguous (free of torch).
#pragma once

#include <cstdint>

#include "simd.h"

namespace mambatr {

template <typename T>
struct Rows {
  const T* p = nullptr;
  int64_t sb = 0, st = 0;
  Rows() = default;
  Rows(const T* data, int64_t batch_stride, int64_t row_stride) : p(data), sb(batch_stride), st(row_stride) {}
  const T* row(int64_t b, int64_t t) const { return p + b * sb + t * st; }
};

}  // namespace mambatr
