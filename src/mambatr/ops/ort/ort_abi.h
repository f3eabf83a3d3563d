// The few pieces of onnxruntime's C ABI that mambatr's custom operators use, declared here so the
// library builds with a C++ compiler alone (the onnxruntime pip wheel ships no headers).
//
// Written for API version 13 (onnxruntime 1.13; newer runtimes serve older API versions): the C API is
// a table of function pointers (OrtApi) in a fixed, append-only order, so only the entries used are
// named, by their position in that table; a custom operator is a struct of callbacks (OrtCustomOp)
// whose `version` field tells the runtime which callbacks exist (up to GetInputMemoryType at 13).
// tests/test_onnx_custom.py loads the library into the installed onnxruntime and checks its values.
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

constexpr uint32_t kOrtApiVersion = 13;

struct OrtStatus;
struct OrtApi;
struct OrtValue;
struct OrtKernelInfo;
struct OrtKernelContext;
struct OrtSessionOptions;
struct OrtCustomOpDomain;
struct OrtTensorTypeAndShapeInfo;

enum OrtErrorCode { ORT_OK = 0, ORT_FAIL = 1, ORT_INVALID_ARGUMENT = 2 };
enum ONNXTensorElementDataType { ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT = 1 };
enum OrtCustomOpInputOutputCharacteristic { INPUT_OUTPUT_REQUIRED = 0, INPUT_OUTPUT_OPTIONAL = 1 };
enum OrtMemType { OrtMemTypeDefault = 0 };

struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version) noexcept;
  const char* (*GetVersionString)() noexcept;
};

struct OrtCustomOp {
  uint32_t version;
  void* (*CreateKernel)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);
  const char* (*GetName)(const OrtCustomOp* op);
  const char* (*GetExecutionProviderType)(const OrtCustomOp* op);
  ONNXTensorElementDataType (*GetInputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetInputTypeCount)(const OrtCustomOp* op);
  ONNXTensorElementDataType (*GetOutputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetOutputTypeCount)(const OrtCustomOp* op);
  void (*KernelCompute)(void* kernel, OrtKernelContext* context);
  void (*KernelDestroy)(void* kernel);
  OrtCustomOpInputOutputCharacteristic (*GetInputCharacteristic)(const OrtCustomOp* op, size_t index);
  OrtCustomOpInputOutputCharacteristic (*GetOutputCharacteristic)(const OrtCustomOp* op, size_t index);
  OrtMemType (*GetInputMemoryType)(const OrtCustomOp* op, size_t index);
};

}  // extern "C"

namespace mambatr::ort {

// Positions in the OrtApi table of the entries used, and their signatures.
enum ApiIndex : int {
  kCreateStatus = 0,
  kGetErrorMessage = 2,
  kCreateCustomOpDomain = 26,
  kCustomOpDomainAdd = 27,
  kAddCustomOpDomain = 28,
  kGetTensorMutableData = 51,
  kGetDimensionsCount = 61,
  kGetDimensions = 62,
  kGetTensorTypeAndShape = 65,
  kKernelInfoGetAttributeInt64 = 86,
  kKernelContextGetInputCount = 88,
  kKernelContextGetInput = 90,
  kKernelContextGetOutput = 91,
  kReleaseStatus = 93,
  kReleaseTensorTypeAndShapeInfo = 99,
};

using CreateStatusFn = OrtStatus* (*)(OrtErrorCode code, const char* message);
using GetErrorMessageFn = const char* (*)(const OrtStatus* status);
using ReleaseStatusFn = void (*)(OrtStatus* status);
using CreateCustomOpDomainFn = OrtStatus* (*)(const char* domain, OrtCustomOpDomain** out);
using CustomOpDomainAddFn = OrtStatus* (*)(OrtCustomOpDomain* domain, const OrtCustomOp* op);
using AddCustomOpDomainFn = OrtStatus* (*)(OrtSessionOptions* options, OrtCustomOpDomain* domain);
using GetTensorMutableDataFn = OrtStatus* (*)(OrtValue* value, void** out);
using GetDimensionsCountFn = OrtStatus* (*)(const OrtTensorTypeAndShapeInfo* info, size_t* out);
using GetDimensionsFn = OrtStatus* (*)(const OrtTensorTypeAndShapeInfo* info, int64_t* dims, size_t count);
using GetTensorTypeAndShapeFn = OrtStatus* (*)(const OrtValue* value, OrtTensorTypeAndShapeInfo** out);
using KernelInfoGetAttributeInt64Fn = OrtStatus* (*)(const OrtKernelInfo* info, const char* name, int64_t* out);
using KernelContextGetInputCountFn = OrtStatus* (*)(const OrtKernelContext* context, size_t* out);
using KernelContextGetInputFn = OrtStatus* (*)(const OrtKernelContext* context, size_t index, const OrtValue** out);
using KernelContextGetOutputFn = OrtStatus* (*)(OrtKernelContext* context, size_t index, const int64_t* dims,
                                                size_t count, OrtValue** out);
using ReleaseTensorTypeAndShapeInfoFn = void (*)(OrtTensorTypeAndShapeInfo* info);

// The entry at `index` of the table, as a function pointer of type F.
template <typename F>
F entry(const OrtApi* api, ApiIndex index) {
  return reinterpret_cast<F const*>(api)[index];
}

}  // namespace mambatr::ort
