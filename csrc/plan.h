// Native engine plans (format version 1, specified in kernels/plan.py): the host reader and validator. Plain
// C++17, no CUDA: read_plan parses a plan file into engine::Plan and checks every CRC, offset, range, index and
// argument against the specification, so the CUDA runtime (plan_runtime.cu, plan_upscale.cu) can trust what it
// launches.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace engine {

// A plan file that cannot be used (missing, truncated, corrupted, another format version or GPU architecture,
// inconsistent). The message names the file, the problem and the fix. engine._C.PlanError (a ValueError) in
// Python.
class PlanError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

constexpr uint32_t kPlanVersion = 1;
constexpr uint64_t kPlanHeaderBytes = 64;
constexpr uint64_t kPlanSectionAlign = 256;

// The kinds of a launch argument (ARGS records).
enum class ArgKind : uint32_t { arena = 1, weights = 2, null = 3, i32 = 4, f32 = 5, alpha = 6 };

// True for ARENA, WEIGHTS and NULL (8-byte parameters).
inline bool is_pointer(ArgKind kind) {
  return kind == ArgKind::arena || kind == ArgKind::weights || kind == ArgKind::null;
}

struct PlanKernel {
  std::string name;                  // the cubin's entry point
  std::vector<uint8_t> cubin;        // the ELF image; empty in a format-only plan (the runtime refuses it)
  uint32_t num_warps = 0;            // block = 32 * num_warps threads
  uint32_t shared_bytes = 0;         // dynamic shared memory per block
  std::vector<uint32_t> param_sizes; // 4 or 8 per parameter, in the cubin's parameter order
};

struct PlanShape {
  int64_t n = 0, c_in = 0, h = 0, w = 0;        // the float32 NCHW input tile batch
  int64_t c_out = 0, h_out = 0, w_out = 0;      // the float32 NCHW output (n, c_out, h_out, w_out)
  uint64_t arena_bytes = 0, input_off = 0, output_off = 0;
  uint64_t launch_first = 0, launch_count = 0;  // in Plan::launches

  uint64_t input_bytes() const { return static_cast<uint64_t>(n * c_in * h * w) * 4; }
  uint64_t output_bytes() const { return static_cast<uint64_t>(n * c_out * h_out * w_out) * 4; }
};

struct PlanArg {
  ArgKind kind = ArgKind::null;
  uint64_t value = 0;  // byte offset (ARENA, WEIGHTS), int32 / float32 bits in the low 32 bits (I32, F32)
};

struct PlanLaunch {
  uint32_t kernel = 0;                // index into Plan::kernels
  uint32_t grid[3] = {1, 1, 1};
  std::vector<PlanArg> args;          // one per kernel parameter
};

struct Plan {
  std::string path;
  uint32_t version = 0;
  uint32_t arch = 0;          // SM architecture of the cubins, e.g. 90
  uint64_t file_bytes = 0;
  std::string meta;           // UTF-8 JSON object, passed through
  std::vector<PlanKernel> kernels;
  std::vector<PlanShape> shapes;      // at least one
  std::vector<PlanLaunch> launches;
  bool has_alpha = false;             // the ALPH section is present
  uint64_t alpha_first = 0, alpha_count = 0;
  std::vector<uint8_t> weights;       // the weights buffer's initial contents (WGHT)

  uint64_t max_arena_bytes() const;
};

// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), identical to Python's zlib.crc32(data, crc).
uint32_t crc32(const void* data, size_t bytes, uint32_t crc = 0);

// Reads and validates the plan at `path`. expected_arch > 0: refuse a plan built for another SM architecture
// (device_name, when given, names the GPU in the message); 0: no check. Throws PlanError.
Plan read_plan(const std::string& path, uint32_t expected_arch = 0, const std::string& device_name = "");

}  // namespace engine
