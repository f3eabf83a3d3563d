// Shared pieces of the CPU kernels' torch side: row views of tensors and shape checks.
#pragma once

#include <ATen/ATen.h>

#include "rows.h"

namespace mambatr {

// The row view of a (batch, length, width) tensor.
template <typename T>
Rows<T> rows_of(const at::Tensor& t) {
  return Rows<T>(t.data_ptr<T>(), t.stride(0), t.stride(1));
}

inline void check_rows(const at::Tensor& t, const char* name, int64_t batch, int64_t length, int64_t width) {
  TORCH_CHECK(t.dim() == 3 && t.size(0) == batch && t.size(1) == length && t.size(2) == width, name,
              " must have shape (", batch, ", ", length, ", ", width, "), got ", t.sizes());
  TORCH_CHECK(width <= 1 || t.stride(2) == 1, name, " must be contiguous in its last dimension");
}

}  // namespace mambatr
