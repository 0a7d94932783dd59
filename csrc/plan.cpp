// The plan reader and validator (plan.h): every check of kernels/plan.py's format, in host code.
#include "plan.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <system_error>
#include <vector>

namespace engine {
namespace {

constexpr char kMagic[8] = {'E', 'S', 'R', 'G', 'P', 'L', 'A', 'N'};
constexpr uint64_t kTableEntryBytes = 24;
constexpr const char* kRebuild = "rebuild the plan with python -m engine.build --backend native ...";

// Record sizes of the table sections, in bytes.
constexpr uint64_t kKernRecord = 8 * 8, kParmRecord = 8, kShapRecord = 16 * 8, kLnchRecord = 8 * 8,
                   kAlphRecord = 2 * 8, kArgsRecord = 2 * 8;

// Largest grid, per dimension (CUDA: x < 2^31, y and z < 65536).
constexpr uint64_t kMaxGrid[3] = {(uint64_t{1} << 31) - 1, 65535, 65535};
// Largest shape dimension: keeps every element count and byte size far from overflowing 64 bits.
constexpr uint64_t kMaxDim = uint64_t{1} << 31;

const std::array<const char*, 10> kTags = {"META", "STRS", "CUBN", "KERN", "PARM",
                                           "SHAP", "LNCH", "ALPH", "ARGS", "WGHT"};

std::string num(uint64_t v) { return std::to_string(v); }

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

// Printable ASCII as is, other bytes as \xNN.
std::string printable(const uint8_t* bytes, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    if (bytes[i] >= 0x20 && bytes[i] < 0x7f && bytes[i] != '\\' && bytes[i] != '\'') {
      s += static_cast<char>(bytes[i]);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", bytes[i]);
      s += buf;
    }
  }
  return s;
}

// off + len <= size, without overflow.
bool inside(uint64_t off, uint64_t len, uint64_t size) { return off <= size && len <= size - off; }

std::string range(uint64_t off, uint64_t len) { return "[" + num(off) + ", " + num(off + len) + ")"; }

uint32_t u32_at(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
         static_cast<uint32_t>(p[3]) << 24;
}

uint64_t u64_at(const uint8_t* p) {
  return static_cast<uint64_t>(u32_at(p)) | static_cast<uint64_t>(u32_at(p + 4)) << 32;
}

bool valid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned c = p[i];
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      len = 2, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) return false;
      cp = cp << 6 | (p[i + k] & 0x3f);
    }
    const uint32_t least[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < least[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

class Reader {
 public:
  Reader(std::string path, uint32_t expected_arch, std::string device_name)
      : path_(std::move(path)), expected_arch_(expected_arch), device_name_(std::move(device_name)) {}

  Plan read() {
    load_file();
    parse_header();
    parse_table();
    Plan plan;
    plan.path = path_;
    plan.version = version_;
    plan.arch = arch_;
    plan.file_bytes = data_.size();
    parse_meta(&plan);
    parse_kernels(&plan);
    parse_launches(&plan);
    parse_shapes(&plan);
    parse_alpha(&plan);
    check_coverage(plan);
    const Section& w = section("WGHT");
    plan.weights.assign(data_.begin() + static_cast<std::ptrdiff_t>(w.offset),
                        data_.begin() + static_cast<std::ptrdiff_t>(w.offset + w.bytes));
    return plan;
  }

 private:
  struct Section {
    bool present = false;
    uint64_t offset = 0, bytes = 0;
  };

  [[noreturn]] void fail(const std::string& problem) const {
    throw PlanError(path_ + ": " + problem + "; " + kRebuild);
  }

  void load_file() {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::file_status status = fs::status(path_, ec);
    if (ec || !fs::exists(status)) {
      const std::string why = ec ? ec.message() : "No such file or directory";
      fail("cannot read the plan file (" + why + ")");
    }
    if (!fs::is_regular_file(status)) fail("is not a regular file, so not a plan file");
    std::ifstream in(path_, std::ios::binary);
    if (!in) fail(std::string("cannot open the plan file (") + std::strerror(errno) + ")");
    in.seekg(0, std::ios::end);
    const std::streamoff size = in.tellg();
    if (size < 0) fail("cannot read the plan file (cannot tell its size)");
    in.seekg(0, std::ios::beg);
    data_.resize(static_cast<size_t>(size));
    if (size > 0 && !in.read(reinterpret_cast<char*>(data_.data()), size)) {
      fail(std::string("cannot read the plan file (") + std::strerror(errno) + ")");
    }
  }

  void parse_header() {
    const uint64_t size = data_.size();
    if (size < kPlanHeaderBytes) {
      const size_t head = std::min<size_t>(size, sizeof kMagic);
      if (size >= sizeof kMagic && std::memcmp(data_.data(), kMagic, sizeof kMagic) != 0) {
        fail("not an engine plan (it is " + num(size) + " bytes and starts with b'" + printable(data_.data(), head) +
             "', a plan starts with b'ESRGPLAN')");
      }
      fail("truncated: the file is " + num(size) + " bytes, shorter than the " + num(kPlanHeaderBytes) +
           "-byte plan header (or not an engine plan)");
    }
    const uint8_t* h = data_.data();
    if (std::memcmp(h, kMagic, sizeof kMagic) != 0) {
      fail("not an engine plan (it starts with b'" + printable(h, 8) + "', a plan starts with b'ESRGPLAN')");
    }
    version_ = u32_at(h + 8);
    if (version_ != kPlanVersion) {
      throw PlanError(path_ + ": plan format version " + num(version_) + ", this runtime reads version " +
                      num(kPlanVersion) + ": " + kRebuild);
    }
    const uint32_t header_crc = u32_at(h + 36), actual = crc32(h, 36);
    if (actual != header_crc) {
      fail("the plan header is corrupted (CRC-32 of its bytes [0, 36) is " + hex32(actual) + ", the header says " +
           hex32(header_crc) + ")");
    }
    const uint32_t header_bytes = u32_at(h + 12);
    if (header_bytes != kPlanHeaderBytes) {
      fail("header_bytes is " + num(header_bytes) + ", format version 1 has a " + num(kPlanHeaderBytes) +
           "-byte header");
    }
    arch_ = u32_at(h + 16);
    section_count_ = u32_at(h + 20);
    const uint64_t file_bytes = u64_at(h + 24);
    table_crc_ = u32_at(h + 32);
    if (size < file_bytes) {
      fail("truncated: the file is " + num(size) + " bytes, its header says " + num(file_bytes));
    }
    if (size > file_bytes) {
      fail("the file is " + num(size) + " bytes, its header says " + num(file_bytes) +
           " (trailing bytes after the plan)");
    }
    if (expected_arch_ > 0 && arch_ != expected_arch_) {
      const std::string gpu = device_name_.empty() ? "this GPU" : "this GPU (" + device_name_ + ")";
      throw PlanError(path_ + " was built for sm_" + num(arch_) + ", " + gpu + " is sm_" + num(expected_arch_) +
                      ": rebuild the plan on this GPU (python -m engine.build --backend native ...)");
    }
  }

  void parse_table() {
    const uint64_t size = data_.size();
    const uint64_t table_bytes = kTableEntryBytes * section_count_;
    if (!inside(kPlanHeaderBytes, table_bytes, size)) {
      fail("the section table (" + num(section_count_) + " entries of 24 bytes at offset 64) lies outside the file (" +
           num(size) + " bytes)");
    }
    const uint8_t* table = data_.data() + kPlanHeaderBytes;
    const uint32_t actual = crc32(table, table_bytes);
    if (actual != table_crc_) {
      fail("the section table is corrupted (CRC-32 " + hex32(actual) + ", the header says " + hex32(table_crc_) +
           ")");
    }
    const uint64_t table_end = kPlanHeaderBytes + table_bytes;
    for (uint32_t i = 0; i < section_count_; ++i) {
      const uint8_t* e = table + kTableEntryBytes * i;
      const std::string tag(reinterpret_cast<const char*>(e), 4);
      const std::string shown = "section " + num(i) + " ('" + printable(e, 4) + "')";
      if (std::find_if(kTags.begin(), kTags.end(), [&](const char* t) { return tag == t; }) == kTags.end()) {
        fail(shown + " has an unknown tag (format version 1 has META, STRS, CUBN, KERN, PARM, SHAP, LNCH, ALPH, "
             "ARGS, WGHT)");
      }
      const uint32_t crc = u32_at(e + 4);
      const uint64_t offset = u64_at(e + 8), bytes = u64_at(e + 16);
      Section& s = sections_[tag];
      if (s.present) fail("section " + tag + " appears twice in the section table");
      if (offset % kPlanSectionAlign != 0) {
        fail("section " + tag + " starts at offset " + num(offset) + ", not a multiple of " +
             num(kPlanSectionAlign));
      }
      if (!inside(offset, bytes, size) || (bytes > 0 && offset < table_end)) {
        fail("section " + tag + " (offset " + num(offset) + ", " + num(bytes) + " bytes) lies outside the file's " +
             "sections " + range(table_end, size - table_end));
      }
      const uint32_t got = crc32(data_.data() + offset, bytes);
      if (got != crc) {
        fail("section " + tag + " is corrupted (CRC-32 " + hex32(got) + ", the section table says " + hex32(crc) +
             ")");
      }
      s = {true, offset, bytes};
    }
    for (const char* tag : kTags) {
      if (std::strcmp(tag, "ALPH") != 0 && !sections_[tag].present) {
        fail("the required section " + std::string(tag) + " is missing");
      }
    }
  }

  const Section& section(const char* tag) { return sections_[tag]; }
  const uint8_t* bytes_of(const Section& s) const { return data_.data() + s.offset; }

  // The number of records of a table section, checking its size.
  uint64_t records(const char* tag, uint64_t record_bytes) {
    const Section& s = section(tag);
    if (s.bytes % record_bytes != 0) {
      fail("section " + std::string(tag) + " is " + num(s.bytes) + " bytes, not a multiple of its " +
           num(record_bytes) + "-byte records");
    }
    return s.bytes / record_bytes;
  }

  void parse_meta(Plan* plan) {
    const Section& s = section("META");
    plan->meta.assign(reinterpret_cast<const char*>(bytes_of(s)), s.bytes);
    if (!valid_utf8(plan->meta)) fail("section META is not UTF-8 text");
    const size_t first = plan->meta.find_first_not_of(" \t\r\n");
    const size_t last = plan->meta.find_last_not_of(" \t\r\n");
    if (first == std::string::npos || plan->meta[first] != '{' || plan->meta[last] != '}') {
      fail("section META is not a JSON object");
    }
  }

  void parse_kernels(Plan* plan) {
    const Section& strs = section("STRS");
    const Section& cubn = section("CUBN");
    const uint64_t n_params = records("PARM", kParmRecord);
    const uint8_t* parm = bytes_of(section("PARM"));
    const uint64_t n = records("KERN", kKernRecord);
    if (n == 0) fail("section KERN lists no kernels");
    const uint8_t* kern = bytes_of(section("KERN"));
    plan->kernels.resize(n);
    for (uint64_t k = 0; k < n; ++k) {
      const uint8_t* r = kern + k * kKernRecord;
      const uint64_t name_off = u64_at(r), name_len = u64_at(r + 8), cubin_off = u64_at(r + 16),
                     cubin_bytes = u64_at(r + 24), num_warps = u64_at(r + 32), shared = u64_at(r + 40),
                     param_first = u64_at(r + 48), param_count = u64_at(r + 56);
      const std::string at = "kernel " + num(k);
      if (name_len == 0 || !inside(name_off, name_len, strs.bytes)) {
        fail(at + ": its name " + range(name_off, name_len) + " is empty or lies outside section STRS (" +
             num(strs.bytes) + " bytes)");
      }
      PlanKernel& kernel = plan->kernels[k];
      kernel.name.assign(reinterpret_cast<const char*>(bytes_of(strs) + name_off), name_len);
      if (!std::all_of(kernel.name.begin(), kernel.name.end(), [](char ch) { return ch > 0x20 && ch < 0x7f; })) {
        fail(at + ": its name b'" + printable(reinterpret_cast<const uint8_t*>(kernel.name.data()), name_len) +
             "' is not a printable ASCII identifier");
      }
      const std::string named = at + " (" + printable(reinterpret_cast<const uint8_t*>(kernel.name.data()),
                                                      kernel.name.size()) + ")";
      // An empty cubin is allowed here (a format-only plan, built without compiling); the runtime refuses it.
      if (!inside(cubin_off, cubin_bytes, cubn.bytes)) {
        fail(named + ": its cubin " + range(cubin_off, cubin_bytes) + " lies outside section CUBN (" +
             num(cubn.bytes) + " bytes)");
      }
      if (cubin_off % kPlanSectionAlign != 0) {
        fail(named + ": its cubin starts at CUBN offset " + num(cubin_off) + ", not a multiple of " +
             num(kPlanSectionAlign));
      }
      kernel.cubin.assign(bytes_of(cubn) + cubin_off, bytes_of(cubn) + cubin_off + cubin_bytes);
      if (num_warps < 1 || num_warps > 32) {
        fail(named + ": num_warps is " + num(num_warps) + ", must be in 1..32 (at most 1024 threads per block)");
      }
      if (shared > std::numeric_limits<uint32_t>::max()) {
        fail(named + ": shared_bytes is " + num(shared) + ", too large");
      }
      kernel.num_warps = static_cast<uint32_t>(num_warps);
      kernel.shared_bytes = static_cast<uint32_t>(shared);
      if (!inside(param_first, param_count, n_params)) {
        fail(named + ": its parameters " + range(param_first, param_count) + " lie outside section PARM (" +
             num(n_params) + " parameters)");
      }
      kernel.param_sizes.resize(param_count);
      for (uint64_t p = 0; p < param_count; ++p) {
        const uint64_t bytes = u64_at(parm + (param_first + p) * kParmRecord);
        if (bytes != 4 && bytes != 8) {
          fail(named + ": parameter " + num(p) + " is " + num(bytes) + " bytes, must be 4 or 8");
        }
        kernel.param_sizes[p] = static_cast<uint32_t>(bytes);
      }
    }
  }

  void parse_launches(Plan* plan) {
    const uint64_t n_args = records("ARGS", kArgsRecord);
    const uint8_t* args = bytes_of(section("ARGS"));
    const uint64_t n = records("LNCH", kLnchRecord);
    const uint8_t* lnch = bytes_of(section("LNCH"));
    const uint64_t weights_bytes = section("WGHT").bytes;
    plan->launches.resize(n);
    for (uint64_t l = 0; l < n; ++l) {
      const uint8_t* r = lnch + l * kLnchRecord;
      const uint64_t kernel = u64_at(r), arg_first = u64_at(r + 32), arg_count = u64_at(r + 40);
      const std::string at = "launch " + num(l);
      if (kernel >= plan->kernels.size()) {
        fail(at + ": kernel index " + num(kernel) + " is out of range (the plan has " +
             num(plan->kernels.size()) + (plan->kernels.size() == 1 ? " kernel)" : " kernels)"));
      }
      PlanLaunch& launch = plan->launches[l];
      launch.kernel = static_cast<uint32_t>(kernel);
      const char* axis = "xyz";
      for (int d = 0; d < 3; ++d) {
        const uint64_t g = u64_at(r + 8 + 8 * d);
        if (g < 1 || g > kMaxGrid[d]) {
          fail(at + ": grid_" + axis[d] + " is " + num(g) + ", must be in 1.." + num(kMaxGrid[d]));
        }
        launch.grid[d] = static_cast<uint32_t>(g);
      }
      const PlanKernel& k = plan->kernels[kernel];
      if (!inside(arg_first, arg_count, n_args)) {
        fail(at + ": its arguments " + range(arg_first, arg_count) + " lie outside section ARGS (" + num(n_args) +
             " arguments)");
      }
      if (arg_count != k.param_sizes.size()) {
        fail(at + ": " + num(arg_count) + " arguments, but its kernel " + num(kernel) + " (" + k.name + ") has " +
             num(k.param_sizes.size()) + " parameters");
      }
      launch.args.resize(arg_count);
      for (uint64_t a = 0; a < arg_count; ++a) {
        const uint8_t* rec = args + (arg_first + a) * kArgsRecord;
        const uint64_t kind = u64_at(rec), value = u64_at(rec + 8);
        const std::string arg = at + ", argument " + num(a);
        if (kind < 1 || kind > 6) {
          fail(arg + ": unknown kind " + num(kind) +
               " (1 ARENA, 2 WEIGHTS, 3 NULL, 4 I32, 5 F32, 6 ALPHA)");
        }
        const auto kd = static_cast<ArgKind>(kind);
        const uint32_t want = is_pointer(kd) ? 8 : 4;
        if (k.param_sizes[a] != want) {
          fail(arg + ": a " + (want == 8 ? std::string("pointer") : std::string("32-bit")) + " argument (kind " +
               num(kind) + ") for " + (k.param_sizes[a] == 8 ? "an " : "a ") + num(k.param_sizes[a]) +
               "-byte parameter of kernel " + num(kernel) +
               " (" + k.name + ")");
        }
        if (kd == ArgKind::weights && value >= weights_bytes) {
          fail(arg + ": weights offset " + num(value) + " lies outside the weights buffer (WGHT, " +
               num(weights_bytes) + " bytes)");
        }
        launch.args[a] = {kd, value};
      }
    }
  }

  void parse_shapes(Plan* plan) {
    const uint64_t n = records("SHAP", kShapRecord);
    if (n == 0) fail("section SHAP lists no shapes (a plan needs at least one built shape)");
    const uint8_t* shap = bytes_of(section("SHAP"));
    const uint64_t n_launches = plan->launches.size();
    plan->shapes.resize(n);
    for (uint64_t s = 0; s < n; ++s) {
      const uint8_t* r = shap + s * kShapRecord;
      uint64_t v[12];
      for (int i = 0; i < 12; ++i) v[i] = u64_at(r + 8 * i);
      const std::string at = "shape " + num(s);
      const char* dims[7] = {"n", "c_in", "h", "w", "c_out", "h_out", "w_out"};
      for (int i = 0; i < 7; ++i) {
        if (v[i] < 1 || v[i] > kMaxDim) {
          fail(at + ": " + dims[i] + " is " + num(v[i]) + ", must be in 1.." + num(kMaxDim));
        }
      }
      PlanShape& shape = plan->shapes[s];
      shape.n = static_cast<int64_t>(v[0]);
      shape.c_in = static_cast<int64_t>(v[1]);
      shape.h = static_cast<int64_t>(v[2]);
      shape.w = static_cast<int64_t>(v[3]);
      shape.c_out = static_cast<int64_t>(v[4]);
      shape.h_out = static_cast<int64_t>(v[5]);
      shape.w_out = static_cast<int64_t>(v[6]);
      shape.arena_bytes = v[7];
      shape.input_off = v[8];
      shape.output_off = v[9];
      shape.launch_first = v[10];
      shape.launch_count = v[11];
      const std::string dims_in = "(" + num(v[0]) + ", " + num(v[1]) + ", " + num(v[2]) + ", " + num(v[3]) + ")";
      const std::string dims_out = "(" + num(v[0]) + ", " + num(v[4]) + ", " + num(v[5]) + ", " + num(v[6]) + ")";
      check_region(at, "input " + dims_in, shape.input_off, v[0], v[1], v[2], v[3], shape.arena_bytes);
      check_region(at, "output " + dims_out, shape.output_off, v[0], v[4], v[5], v[6], shape.arena_bytes);
      if (!inside(shape.launch_first, shape.launch_count, n_launches)) {
        fail(at + ": its launches " + range(shape.launch_first, shape.launch_count) + " lie outside section LNCH (" +
             num(n_launches) + " launches)");
      }
      for (uint64_t l = shape.launch_first; l < shape.launch_first + shape.launch_count; ++l) {
        const PlanLaunch& launch = plan->launches[l];
        for (size_t a = 0; a < launch.args.size(); ++a) {
          const PlanArg& arg = launch.args[a];
          const std::string where = at + ", launch " + num(l) + ", argument " + num(a);
          if (arg.kind == ArgKind::alpha) fail(where + ": an ALPHA argument outside the alpha program");
          if (arg.kind == ArgKind::arena && arg.value >= shape.arena_bytes) {
            fail(where + ": arena offset " + num(arg.value) + " lies outside the shape's arena (" +
                 num(shape.arena_bytes) + " bytes)");
          }
        }
      }
    }
  }

  void check_region(const std::string& at, const std::string& what, uint64_t off, uint64_t a, uint64_t b,
                    uint64_t c, uint64_t d, uint64_t arena_bytes) {
    constexpr uint64_t kHuge = std::numeric_limits<uint64_t>::max();
    uint64_t bytes = 4;  // saturating product: every factor is in 1..2^31
    for (uint64_t f : {a, b, c, d}) bytes = bytes > kHuge / f ? kHuge : bytes * f;
    if (off % 4 != 0) {
      fail(at + ": the float32 " + what + " starts at arena offset " + num(off) + ", not a multiple of 4");
    }
    if (bytes == kHuge || !inside(off, bytes, arena_bytes)) {
      fail(at + ": the float32 " + what + " at arena offset " + num(off) + " (" +
           (bytes == kHuge ? std::string("over 2^64") : num(bytes)) + " bytes) does not fit in its arena (" +
           num(arena_bytes) + " bytes)");
    }
  }

  void parse_alpha(Plan* plan) {
    const Section& s = section("ALPH");
    if (!s.present) return;
    if (s.bytes != kAlphRecord) {
      fail("section ALPH is " + num(s.bytes) + " bytes, format version 1 has one " + num(kAlphRecord) +
           "-byte record");
    }
    const uint64_t first = u64_at(bytes_of(s)), count = u64_at(bytes_of(s) + 8);
    if (!inside(first, count, plan->launches.size())) {
      fail("the alpha program's launches " + range(first, count) + " lie outside section LNCH (" +
           num(plan->launches.size()) + " launches)");
    }
    for (uint64_t l = first; l < first + count; ++l) {
      const PlanLaunch& launch = plan->launches[l];
      for (size_t a = 0; a < launch.args.size(); ++a) {
        if (launch.args[a].kind == ArgKind::arena) {
          fail("the alpha program's launch " + num(l) + ", argument " + num(a) +
               ": an ARENA pointer (the alpha program may only use the weights buffer)");
        }
      }
    }
    plan->has_alpha = true;
    plan->alpha_first = first;
    plan->alpha_count = count;
  }

  void check_coverage(const Plan& plan) {
    std::vector<bool> used(plan.launches.size(), false);
    for (const PlanShape& s : plan.shapes) {
      std::fill(used.begin() + static_cast<std::ptrdiff_t>(s.launch_first),
                used.begin() + static_cast<std::ptrdiff_t>(s.launch_first + s.launch_count), true);
    }
    if (plan.has_alpha) {
      std::fill(used.begin() + static_cast<std::ptrdiff_t>(plan.alpha_first),
                used.begin() + static_cast<std::ptrdiff_t>(plan.alpha_first + plan.alpha_count), true);
    }
    for (size_t l = 0; l < used.size(); ++l) {
      if (!used[l]) fail("launch " + num(l) + " belongs to no shape and not to the alpha program");
    }
  }

  std::string path_;
  uint32_t expected_arch_;
  std::string device_name_;
  std::vector<uint8_t> data_;
  uint32_t version_ = 0, arch_ = 0, section_count_ = 0, table_crc_ = 0;
  std::map<std::string, Section> sections_;
};

std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  return table;
}

}  // namespace

uint32_t crc32(const void* data, size_t bytes, uint32_t crc) {
  static const std::array<uint32_t, 256> table = make_crc_table();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < bytes; ++i) crc = table[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
  return ~crc;
}

uint64_t Plan::max_arena_bytes() const {
  uint64_t most = 0;
  for (const PlanShape& s : shapes) most = std::max(most, s.arena_bytes);
  return most;
}

Plan read_plan(const std::string& path, uint32_t expected_arch, const std::string& device_name) {
  return Reader(path, expected_arch, device_name).read();
}

}  // namespace engine
