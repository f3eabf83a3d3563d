// mambatr's selective scan and depthwise causal conv as onnxruntime custom operators (domain
// "mambatr": SelectiveScan, CausalConv1d), what ONNX files exported with onnx_ops="custom" call.
// mambatr.ops.ort_build compiles this file into a small shared library that needs neither torch nor
// onnxruntime headers (ort_abi.h declares the C ABI used); onnxruntime loads it with
// SessionOptions.register_custom_ops_library(path), which calls RegisterCustomOps below.
//
// The arithmetic is that of the C++ CPU kernels' forward (csrc/scan.cpp, csrc/conv.cpp), built on the
// same SIMD helpers (csrc/simd.h: polynomial softplus / sigmoid, the decay as vexp2 of A pre-scaled by
// log2 e), in the same order: per (batch element, block of one vector of channels), one pass over the
// sequence for dt, the decay exponent and dt * u, then per chunk of states that fits in registers a
// pass keeping them there, then the gate. Inputs are float32 (batch, length, E) / (batch, length, N)
// rows, contiguous, as onnxruntime hands them over. Forward only, on the thread that runs the node.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "../csrc/simd.h"
#include "ort_abi.h"

namespace mambatr {
namespace {

using V = Vec<float>;
constexpr int kLanes = lanes<float>();
constexpr int kChunk = kVecBytes == 64 ? 16 : 8;  // states per register pass, as in csrc/scan.cpp

struct Scan {
  const float *u, *delta, *A, *B, *C, *D, *z, *bias, *gap;
  int64_t batch, length, E, N;
  bool softplus, reverse;
  int64_t time(int64_t step) const { return reverse ? length - 1 - step : step; }
};

// One channel block's per-step vectors in scan order: A's columns (scaled for vexp2), the decay
// exponent a, dt * u, and y (skip term, then the states' readout).
struct Scratch {
  std::vector<V> A, a, dtu, y;
  Scratch(int64_t length, int64_t N) : A(N), a(length), dtu(length), y(length) {}
};

// States [n0, n0 + C) over the whole sequence in registers: s = exp(a A) s + dtu B_t; y += <s, C_t>.
template <int C>
void state_pass(const Scan& s, int64_t b, int64_t n0, Scratch& sc) {
  V st[C] = {};
  for (int64_t step = 0; step < s.length; ++step) {
    const int64_t t = s.time(step);
    const float* Bt = s.B + (b * s.length + t) * s.N + n0;
    const float* Ct = s.C + (b * s.length + t) * s.N + n0;
    V y0{}, y1{};  // two accumulators halve the dependency chain of the sum over states
#pragma GCC unroll 16
    for (int j = 0; j < C; ++j) {
      st[j] = Decay<float>::exp(sc.a[step] * sc.A[n0 + j]) * st[j] + sc.dtu[step] * Bt[j];
      if (j % 2) {
        y1 += st[j] * Ct[j];
      } else {
        y0 += st[j] * Ct[j];
      }
    }
    sc.y[step] += y0 + y1;
  }
}

// Chunks of C states, then of C / 2, ... 1 for the remainder: every chunk size a compile-time constant.
template <int C>
void state_passes(const Scan& s, int64_t b, int64_t n0, Scratch& sc) {
  for (; n0 + C <= s.N; n0 += C) state_pass<C>(s, b, n0, sc);
  if constexpr (C > 1) state_passes<C / 2>(s, b, n0, sc);
}

void scan_block(const Scan& s, int64_t b, int64_t e0, Scratch& sc, float* out) {
  const int ne = static_cast<int>(std::min<int64_t>(kLanes, s.E - e0));
  for (int64_t n = 0; n < s.N; ++n) {
    V a{};
    for (int i = 0; i < ne; ++i) a[i] = s.A[(e0 + i) * s.N + n] * Decay<float>::kScale;
    sc.A[n] = a;
  }
  const V D = s.D ? load(s.D + e0, ne) : V{};
  const V bias = s.bias ? load(s.bias + e0, ne) : V{};
  V prev{};
  for (int64_t step = 0; step < s.length; ++step) {
    const int64_t t = s.time(step), row = (b * s.length + t) * s.E + e0;
    const V u = load(s.u + row, ne), raw = load(s.delta + row, ne) + bias;
    const V dt = s.softplus ? softplus_value(raw) : raw;
    sc.a[step] = s.gap && step ? dt + s.gap[b * s.length + t] * prev : dt;  // a pruned gap decays too
    prev = dt;
    sc.dtu[step] = dt * u;
    sc.y[step] = D * u;
  }
  state_passes<kChunk>(s, b, 0, sc);
  for (int64_t step = 0; step < s.length; ++step) {
    const int64_t row = (b * s.length + s.time(step)) * s.E + e0;
    V y = sc.y[step];
    if (s.z) {
      const V z = load(s.z + row, ne);
      y = y * z * sigmoid(z);
    }
    store(out + row, y, ne);
  }
}

void scan_forward(const Scan& s, float* out) {
  const FlushDenormals ftz;
  Scratch sc(s.length, s.N);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t e0 = 0; e0 < s.E; e0 += kLanes) scan_block(s, b, e0, sc, out);
  }
}

// out_t = bias + sum_k w_k x_{t-K+1+k} (zero padded; reverse: x_{t+K-1-k}), SiLU'd if silu.
void conv_forward(const float* x, const float* weight, const float* bias, int64_t batch, int64_t L, int64_t E,
                  int64_t K, bool silu, bool reverse, float* out) {
  std::vector<float> wt(K * E);  // (K, E): one vector load per tap
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t k = 0; k < K; ++k) wt[k * E + e] = weight[e * K + k];
  }
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < L; ++t) {
      float* o = out + (b * L + t) * E;
      for (int64_t e0 = 0; e0 < E; e0 += kLanes) {
        const int ne = static_cast<int>(std::min<int64_t>(kLanes, E - e0));
        V y = bias ? load(bias + e0, ne) : V{};
        for (int64_t k = 0; k < K; ++k) {
          const int64_t s = reverse ? t + (K - 1 - k) : t - (K - 1) + k;
          if (s >= 0 && s < L) y += load(wt.data() + k * E + e0, ne) * load(x + (b * L + s) * E + e0, ne);
        }
        store(o + e0, silu ? y * sigmoid(y) : y, ne);
      }
    }
  }
}

}  // namespace
}  // namespace mambatr

namespace mambatr::ort {
namespace {

// Throws the message of a failed call (onnxruntime reports it as the node's error).
void check(const OrtApi* api, OrtStatus* status) {
  if (status == nullptr) return;
  std::string message = entry<GetErrorMessageFn>(api, kGetErrorMessage)(status);
  entry<ReleaseStatusFn>(api, kReleaseStatus)(status);
  throw std::runtime_error(message);
}

struct Tensor {
  float* data = nullptr;  // nullptr: an absent optional input
  std::vector<int64_t> shape;
};

Tensor input(const OrtApi* api, OrtKernelContext* context, size_t index) {
  size_t count = 0;
  check(api, entry<KernelContextGetInputCountFn>(api, kKernelContextGetInputCount)(context, &count));
  Tensor tensor;
  const OrtValue* value = nullptr;
  if (index >= count) return tensor;
  check(api, entry<KernelContextGetInputFn>(api, kKernelContextGetInput)(context, index, &value));
  if (value == nullptr) return tensor;
  OrtTensorTypeAndShapeInfo* info = nullptr;
  check(api, entry<GetTensorTypeAndShapeFn>(api, kGetTensorTypeAndShape)(value, &info));
  size_t rank = 0;
  OrtStatus* status = entry<GetDimensionsCountFn>(api, kGetDimensionsCount)(info, &rank);
  if (status == nullptr) {
    tensor.shape.resize(rank);
    status = entry<GetDimensionsFn>(api, kGetDimensions)(info, tensor.shape.data(), rank);
  }
  entry<ReleaseTensorTypeAndShapeInfoFn>(api, kReleaseTensorTypeAndShapeInfo)(info);
  check(api, status);
  void* data = nullptr;
  check(api, entry<GetTensorMutableDataFn>(api, kGetTensorMutableData)(const_cast<OrtValue*>(value), &data));
  tensor.data = static_cast<float*>(data);
  return tensor;
}

float* output(const OrtApi* api, OrtKernelContext* context, const std::vector<int64_t>& shape) {
  OrtValue* value = nullptr;
  check(api, entry<KernelContextGetOutputFn>(api, kKernelContextGetOutput)(context, 0, shape.data(), shape.size(),
                                                                            &value));
  void* data = nullptr;
  check(api, entry<GetTensorMutableDataFn>(api, kGetTensorMutableData)(value, &data));
  return static_cast<float*>(data);
}

void expect(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string("mambatr.") + op + ": " + what);
}

std::string dims(const Tensor& t) {
  std::string text = "(";
  for (size_t i = 0; i < t.shape.size(); ++i) text += (i ? ", " : "") + std::to_string(t.shape[i]);
  return text + ")";
}

// The node's two flags, read once when onnxruntime creates the kernel.
struct Kernel {
  const OrtApi* api;
  bool flag, reverse;  // flag: softplus (SelectiveScan) or silu (CausalConv1d)
};

Kernel* create(const OrtApi* api, const OrtKernelInfo* info, const char* flag) {
  int64_t value = 0, reverse = 0;
  const auto get = entry<KernelInfoGetAttributeInt64Fn>(api, kKernelInfoGetAttributeInt64);
  check(api, get(info, flag, &value));
  check(api, get(info, "reverse", &reverse));
  return new Kernel{api, value != 0, reverse != 0};
}

// SelectiveScan(u, delta, A, B, C, D?, z?, delta_bias?, gap?) -> y; attributes softplus, reverse.
void scan_compute(void* kernel, OrtKernelContext* context) {
  const Kernel& k = *static_cast<Kernel*>(kernel);
  Tensor t[9];
  for (size_t i = 0; i < 9; ++i) t[i] = input(k.api, context, i);
  const Tensor &u = t[0], &delta = t[1], &A = t[2], &B = t[3], &C = t[4];
  expect(u.shape.size() == 3 && A.shape.size() == 2, "SelectiveScan", "u must be (batch, length, E), A (E, N)");
  const int64_t batch = u.shape[0], length = u.shape[1], E = u.shape[2], N = A.shape[1];
  const std::vector<int64_t> rows = {batch, length, E}, states = {batch, length, N}, channels = {E};
  expect(delta.shape == rows && A.shape[0] == E && B.shape == states && C.shape == states, "SelectiveScan",
         "shapes u " + dims(u) + ", delta " + dims(delta) + ", A " + dims(A) + ", B " + dims(B) + ", C " + dims(C));
  for (int i : {5, 7}) expect(!t[i].data || t[i].shape == channels, "SelectiveScan", "D and delta_bias: (E,)");
  expect(!t[6].data || t[6].shape == rows, "SelectiveScan", "z must have u's shape");
  expect(!t[8].data || t[8].shape == std::vector<int64_t>{batch, length}, "SelectiveScan", "gap: (batch, length)");
  const Scan scan{u.data,  delta.data, A.data, B.data, C.data, t[5].data, t[6].data, t[7].data, t[8].data,
                  batch,   length,     E,      N,      k.flag, k.reverse};
  float* out = output(k.api, context, rows);
  if (batch * length * E > 0) scan_forward(scan, out);
}

// CausalConv1d(x, weight, bias?) -> y; attributes silu, reverse.
void conv_compute(void* kernel, OrtKernelContext* context) {
  const Kernel& k = *static_cast<Kernel*>(kernel);
  const Tensor x = input(k.api, context, 0), weight = input(k.api, context, 1), bias = input(k.api, context, 2);
  expect(x.shape.size() == 3 && weight.shape.size() == 2 && weight.shape[0] == x.shape[2], "CausalConv1d",
         "x must be (batch, length, E), weight (E, K): got " + dims(x) + ", " + dims(weight));
  expect(!bias.data || bias.shape == std::vector<int64_t>{x.shape[2]}, "CausalConv1d", "bias: (E,)");
  float* out = output(k.api, context, x.shape);
  conv_forward(x.data, weight.data, bias.data, x.shape[0], x.shape[1], x.shape[2], weight.shape[1], k.flag,
               k.reverse, out);
}

// An op of `Inputs` float inputs (the first `Required` of them required) and one float output; the
// caller sets GetName (a callback cannot capture the name).
template <size_t Inputs, size_t Required>
OrtCustomOp make_op(void* (*create_kernel)(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*),
                    void (*compute)(void*, OrtKernelContext*)) {
  OrtCustomOp op{};
  op.version = kOrtApiVersion;
  op.CreateKernel = create_kernel;
  op.GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return nullptr; };  // the CPU provider
  op.GetInputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
  op.GetInputTypeCount = [](const OrtCustomOp*) { return Inputs; };
  op.GetOutputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
  op.GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
  op.KernelCompute = compute;
  op.KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
  op.GetInputCharacteristic = [](const OrtCustomOp*, size_t index) {
    return index < Required ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  };
  op.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  op.GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
  return op;
}

OrtCustomOp scan_op() {
  OrtCustomOp op = make_op<9, 5>(
      [](const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info) -> void* {
        return create(api, info, "softplus");
      },
      scan_compute);
  op.GetName = [](const OrtCustomOp*) { return "SelectiveScan"; };
  return op;
}

OrtCustomOp conv_op() {
  OrtCustomOp op = make_op<3, 2>(
      [](const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info) -> void* {
        return create(api, info, "silu");
      },
      conv_compute);
  op.GetName = [](const OrtCustomOp*) { return "CausalConv1d"; };
  return op;
}

}  // namespace
}  // namespace mambatr::ort

// onnxruntime's entry point for a custom-op library: adds the "mambatr" domain to the session options.
// The ops and the domain live as long as the process (onnxruntime needs them while any session does).
extern "C" __attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options,
                                                                             const OrtApiBase* base) {
  using namespace mambatr::ort;
  static const OrtCustomOp ops[] = {scan_op(), conv_op()};
  const OrtApi* api = base->GetApi(kOrtApiVersion);
  if (api == nullptr) {  // a runtime older than 1.13: no API to report the error with
    fprintf(stderr, "mambatr custom ops: onnxruntime %s lacks C API version %u\n", base->GetVersionString(),
            kOrtApiVersion);
    return nullptr;
  }
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* status = entry<CreateCustomOpDomainFn>(api, kCreateCustomOpDomain)("mambatr", &domain)) return status;
  for (const OrtCustomOp& op : ops) {
    if (OrtStatus* status = entry<CustomOpDomainAddFn>(api, kCustomOpDomainAdd)(domain, &op)) return status;
  }
  return entry<AddCustomOpDomainFn>(api, kAddCustomOpDomain)(options, domain);
}
