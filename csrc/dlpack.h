// The DLPack tensor-exchange ABI (the unversioned "dltensor" capsule protocol, DLPack 0.x), only what engine._C
// uses: the struct layouts and the few enum values, written from the published specification
// (https://dmlc.github.io/dlpack/latest/c_api.html). A DLManagedTensor travels in a PyCapsule named "dltensor";
// the consumer renames the capsule "used_dltensor" and calls `deleter` once it is done with the tensor.
#pragma once

#include <cstdint>

extern "C" {

// DLDeviceType values used here.
constexpr int32_t kDLCPU = 1;
constexpr int32_t kDLCUDA = 2;

// DLDataTypeCode values used here.
constexpr uint8_t kDLInt = 0;
constexpr uint8_t kDLUInt = 1;
constexpr uint8_t kDLFloat = 2;

struct DLDevice {
  int32_t device_type;  // a DLDeviceType (a C enum: 32 bits)
  int32_t device_id;
};

struct DLDataType {
  uint8_t code;   // a DLDataTypeCode
  uint8_t bits;   // 32 for float32
  uint16_t lanes; // 1 for scalars
};

struct DLTensor {
  void* data;             // for CUDA, a device pointer; the first element is at data + byte_offset
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;         // ndim entries
  int64_t* strides;       // ndim entries, in elements; NULL: compact row-major
  uint64_t byte_offset;
};

struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

}  // extern "C"

#include <cstddef>

// The ABI on 64-bit platforms.
static_assert(sizeof(DLDevice) == 8 && sizeof(DLDataType) == 4, "DLPack ABI");
static_assert(sizeof(void*) != 8 || (offsetof(DLTensor, device) == 8 && offsetof(DLTensor, ndim) == 16 &&
                                     offsetof(DLTensor, dtype) == 20 && offsetof(DLTensor, shape) == 24 &&
                                     offsetof(DLTensor, strides) == 32 && offsetof(DLTensor, byte_offset) == 40 &&
                                     sizeof(DLTensor) == 48 && offsetof(DLManagedTensor, manager_ctx) == 48 &&
                                     offsetof(DLManagedTensor, deleter) == 56),
              "DLPack ABI");
