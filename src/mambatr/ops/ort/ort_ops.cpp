// mambatr's selective scan and depthwise causal conv as onnxruntime custom operators (domain
// "mambatr": SelectiveScan, CausalConv1d), what ONNX files exported with onnx_ops="custom" call.
// mambatr.ops.ort_build compiles this file into a small shared library that needs neither torch nor
// onnxruntime headers (ort_abi.h declares the C ABI used); onnxruntime loads it with
// SessionOptions.register_custom_ops_library(path), which calls RegisterCustomOps below.
//
// The arithmetic is the C++ CPU kernels' own forward (csrc/scan_forward.h, csrc/conv_forward.h, shared
// with csrc/scan.cpp and csrc/conv.cpp), so the two give the same float32 values. Inputs are float32
// (batch, length, E) / (batch, length, N) rows, contiguous, as onnxruntime hands them over. Forward
// only, on the thread that runs the node.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "../csrc/conv_forward.h"
#include "../csrc/scan_forward.h"
#include "ort_abi.h"

namespace mambatr::ort {
namespace {

// The C++ kernels' forward over every (batch element, block of one vector of channels) in turn.
void scan_forward(const ScanInputs<float>& in, float* out) {
  const FlushDenormals ftz;
  Scratch<float> sc(in.length, in.N, false);
  const int64_t blocks = (in.E + lanes<float>() - 1) / lanes<float>();
  for (int64_t b = 0; b < in.batch; ++b) {
    for (int64_t block = 0; block < blocks; ++block) forward_block(in, b, block, sc, out);
  }
}

// The C++ kernels' conv forward over every batch element; the weight transposed to (K, E) first.
void conv_forward(ConvInputs<float> in, const float* weight, float* out) {
  std::vector<float> wt(in.K * in.E), zeros(in.E);
  for (int64_t e = 0; e < in.E; ++e) {
    for (int64_t k = 0; k < in.K; ++k) wt[k * in.E + e] = weight[e * in.K + k];
  }
  in.wt = wt.data();
  const FlushDenormals ftz;
  with_taps(in.K, [&](auto taps) {
    for (int64_t b = 0; b < in.batch; ++b) forward_rows<float, decltype(taps)::value>(in, b, 0, in.L, zeros.data(), out);
  });
}

}  // namespace
}  // namespace mambatr::ort

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
  ScanInputs<float> in;
  in.u = Rows<float>(u.data, length * E, E);
  in.delta = Rows<float>(delta.data, length * E, E);
  in.B = Rows<float>(B.data, length * N, N);
  in.C = Rows<float>(C.data, length * N, N);
  in.z = Rows<float>(t[6].data, length * E, E);
  in.A = A.data;
  in.D = t[5].data;
  in.bias = t[7].data;
  in.gap = t[8].data;
  in.batch = batch;
  in.length = length;
  in.E = E;
  in.N = N;
  in.softplus = k.flag;
  in.reverse = k.reverse;
  in.has_z = t[6].data != nullptr;
  float* out = output(k.api, context, rows);
  if (batch * length * E > 0) scan_forward(in, out);
}

// CausalConv1d(x, weight, bias?) -> y; attributes silu, reverse.
void conv_compute(void* kernel, OrtKernelContext* context) {
  const Kernel& k = *static_cast<Kernel*>(kernel);
  const Tensor x = input(k.api, context, 0), weight = input(k.api, context, 1), bias = input(k.api, context, 2);
  expect(x.shape.size() == 3 && weight.shape.size() == 2 && weight.shape[0] == x.shape[2], "CausalConv1d",
         "x must be (batch, length, E), weight (E, K): got " + dims(x) + ", " + dims(weight));
  expect(!bias.data || bias.shape == std::vector<int64_t>{x.shape[2]}, "CausalConv1d", "bias: (E,)");
  const int64_t K = weight.shape[1];
  expect(K >= 1 && K <= kMaxTaps, "CausalConv1d", "kernel width " + std::to_string(K) + " outside 1 to " +
                                                      std::to_string(kMaxTaps));
  ConvInputs<float> in;
  in.x = Rows<float>(x.data, x.shape[1] * x.shape[2], x.shape[2]);
  in.bias = bias.data;
  in.batch = x.shape[0];
  in.L = x.shape[1];
  in.E = x.shape[2];
  in.K = K;
  in.silu = k.flag;
  in.reverse = k.reverse;
  float* out = output(k.api, context, x.shape);
  conv_forward(in, weight.data, out);
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
