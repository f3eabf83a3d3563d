// Shared pieces of the CPU kernels: strided row views and shape checks.
#pragma once

#include <ATen/ATen.h>

#include "simd.h"

namespace mambatr {

// Row view of a (batch, length, width) tensor whose last dimension is contiguous.
template <typename T>
struct Rows {
  const T* p = nullptr;
  int64_t sb = 0, st = 0;
  Rows() = default;
  explicit Rows(const at::Tensor& t) : p(t.data_ptr<T>()), sb(t.stride(0)), st(t.stride(1)) {}
  const T* row(int64_t b, int64_t t) const { return p + b * sb + t * st; }
};

inline void check_rows(const at::Tensor& t, const char* name, int64_t batch, int64_t length, int64_t width) {
  TORCH_CHECK(t.dim() == 3 && t.size(0) == batch && t.size(1) == length && t.size(2) == width, name,
              " must have shape (", batch, ", ", length, ", ", width, "), got ", t.sizes());
  TORCH_CHECK(width <= 1 || t.stride(2) == 1, name, " must be contiguous in its last dimension");
}

}  // namespace mambatr
