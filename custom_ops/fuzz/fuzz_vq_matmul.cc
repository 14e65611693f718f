// Fuzz harness for the VQMatMul and VQGather custom ops, driven through the real ONNX Runtime.
//
// Every input (bytes from libFuzzer, or from a seeded generator in standalone mode) is
// decoded into one *case*: VQMatMul or (about a third of the cases) VQGather, a valid layout
// (attributes and exactly sized tensors) to which 0..4 mutations are applied (attribute values from an "interesting" set,
// missing or wrongly typed attributes, tensor shapes off by one, wrong ranks, wrong
// dtypes, absent inputs, NaN/Inf codebooks, empty batches, initializer vs graph input).
// The case is serialized as a one-node ONNX model, loaded with the library under test
// registered (built with AddressSanitizer + UndefinedBehaviorSanitizer), and run.
//
// A finding is any of:
//   * a sanitizer report or a crash (the process dies);
//   * an invalid case that onnxruntime accepts (a validation gap);
//   * a valid case that is rejected (a validation bug);
//   * a valid case whose output differs from a double-precision decode-then-matmul oracle
//     (VQGather: decode-then-index; its indices are mostly valid, sometimes out of range or
//     extreme, which makes the case invalid);
//   * an error message from our op that does not say which tensor/attribute is wrong.
// Findings abort(), so libFuzzer saves the reproducer and the standalone driver exits
// non-zero. The validity oracle below restates onnxvq/ops/schema.py independently.
#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "onnxruntime_cxx_api.h"
#include "generated/vq_schema.h"

namespace {

namespace schema = onnxvq::schema;

// format_version 2 ("fast-scan" blocks, schema.py): axis 0, 4-bit codes only.
constexpr int64_t kV2 = 2;
constexpr int64_t kV2Bits = 4;
constexpr uint64_t kV2BlockRows = 32;
constexpr uint64_t kV2GroupBytes = 16;
// format_version 3 ("byte-scan" blocks): axis 0, 8-bit codes, d >= 2; one byte per code.
constexpr int64_t kV3 = 3;
constexpr uint64_t kV3BlockRows = 64;

bool version_supported(int64_t v) {
  for (int64_t s : schema::kSupportedFormatVersions)
    if (s == v) return true;
  return false;
}

// ---------------------------------------------------------------------------------------
// Input decoding: a little FuzzedDataProvider. Past the end of the input, bytes come from a
// generator seeded with a hash of the whole input, so short inputs still give varied cases.
struct Reader {
  const uint8_t* data;
  size_t size;
  uint64_t state;
  Reader(const uint8_t* d, size_t n) : data(d), size(n), state(0xcbf29ce484222325ull) {
    for (size_t i = 0; i < n; ++i) state = (state ^ d[i]) * 0x100000001b3ull;
  }
  uint8_t next_byte() {
    if (size) return --size, *data++;
    state += 0x9e3779b97f4a7c15ull;  // splitmix64
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return static_cast<uint8_t>(z ^ (z >> 31));
  }
  uint64_t word(int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v = (v << 8) | next_byte();
    return v;
  }
  // Uniform-ish in [lo, hi].
  int64_t range(int64_t lo, int64_t hi) {
    const uint64_t span = static_cast<uint64_t>(hi - lo) + 1;
    const int bytes = span <= 256 ? 1 : span <= 65536 ? 2 : 4;
    return lo + static_cast<int64_t>(word(bytes) % span);
  }
  bool coin(int percent_true) { return range(0, 99) < percent_true; }
};

// ---------------------------------------------------------------------------------------
// The case.
enum class AttrKind { kInt, kFloat, kString, kMissing };
struct Attr {
  AttrKind kind = AttrKind::kInt;
  int64_t value = 0;
};

struct Tensor {
  bool present = true;  // false: the node input name is empty
  bool initializer = false;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  std::vector<int64_t> shape;
};

struct Case {
  bool gather = false;  // VQGather: x is the indices tensor, there is no bias
  int bad_index = 0;    // VQGather: 0 valid indices, 1 one just out of range, 2 an extreme value
  std::array<Attr, schema::kNumAttributes> attrs;
  Tensor x, codes, codebooks, bias;
  bool has_bias = false;
  int threads = 1;
  bool optimize = false;
  int nonfinite = 0;  // 0: finite data; 1: NaN/Inf in the codebooks; 2: in X
  uint64_t data_seed = 0;
  std::string mutations;  // for reports
};

int64_t attr(const Case& c, int i) { return c.attrs[i].value; }

enum AttrIndex { kVersion, kK, kN, kBits, kD, kS, kT, kAxis, kGroup, kPerSub };
static_assert(schema::kNumAttributes == 10, "update AttrIndex to the schema");

uint64_t ceil_div(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

bool mul_ok(uint64_t a, uint64_t b, uint64_t* out) {
  if (b != 0 && a > std::numeric_limits<uint64_t>::max() / b) return false;
  *out = a * b;
  return true;
}

// Sizes the attributes imply; ok = false when they do not describe a valid layout.
struct Derived {
  bool ok = false;
  uint64_t R = 0, L = 0, Gs = 0, Gr = 0, ncw = 0, packed = 0;
  std::vector<int64_t> codebooks_shape;
};

Derived derive(const Case& c) {
  Derived d;
  for (const Attr& a : c.attrs)
    if (a.kind != AttrKind::kInt) return d;
  const int64_t v = attr(c, kVersion), K = attr(c, kK), N = attr(c, kN), bits = attr(c, kBits),
                sub = attr(c, kD), S = attr(c, kS), T = attr(c, kT), axis = attr(c, kAxis),
                group = attr(c, kGroup), per = attr(c, kPerSub);
  if (!version_supported(v)) return d;
  if (K < 1 || N < 1 || sub < 1 || S < 1 || T < 1 || group < 1) return d;
  if (bits < 1 || bits > 8 || (axis != 0 && axis != 1) || (per != 0 && per != 1)) return d;
  if (v == kV2 && (axis != 0 || bits != kV2Bits)) return d;
  if (v == kV3 && (axis != 0 || bits != 8 || sub < 2)) return d;
  d.R = static_cast<uint64_t>(axis == 0 ? N : K);
  d.L = static_cast<uint64_t>(axis == 0 ? K : N);
  if (static_cast<uint64_t>(S) != ceil_div(d.L, static_cast<uint64_t>(sub))) return d;
  if (static_cast<uint64_t>(group) > d.R) return d;
  d.Gs = per ? static_cast<uint64_t>(S) : 1;
  d.Gr = ceil_div(d.R, static_cast<uint64_t>(group));
  d.ncw = uint64_t{1} << bits;
  uint64_t n = 0, books = 0;
  if (v == kV2) {
    if (!mul_ok(ceil_div(d.R, kV2BlockRows), static_cast<uint64_t>(T), &n) ||
        !mul_ok(n, static_cast<uint64_t>(S), &n) || !mul_ok(n, kV2GroupBytes, &d.packed))
      return d;
  } else if (v == kV3) {
    if (!mul_ok(ceil_div(d.R, kV3BlockRows), static_cast<uint64_t>(T), &n) ||
        !mul_ok(n, static_cast<uint64_t>(S), &n) || !mul_ok(n, kV3BlockRows, &d.packed))
      return d;
  } else {
    if (!mul_ok(static_cast<uint64_t>(T), d.R, &n) || !mul_ok(n, static_cast<uint64_t>(S), &n) ||
        !mul_ok(n, static_cast<uint64_t>(bits), &n))
      return d;
    d.packed = ceil_div(n, 8);
  }
  if (!mul_ok(static_cast<uint64_t>(T), d.Gs, &books) || !mul_ok(books, d.Gr, &books) ||
      !mul_ok(books, d.ncw, &books) || !mul_ok(books, static_cast<uint64_t>(sub), &books) ||
      books > (uint64_t{1} << 40))
    return d;
  d.codebooks_shape = {T, static_cast<int64_t>(d.Gs), static_cast<int64_t>(d.Gr),
                       static_cast<int64_t>(d.ncw), sub};
  d.ok = true;
  return d;
}

uint64_t element_count(const std::vector<int64_t>& shape);

// VQGather's index i (indices data as the case's dtype).
int64_t index_value(const Case& c, const std::vector<uint8_t>& data, uint64_t i) {
  if (c.x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) {
    int32_t v;
    std::memcpy(&v, &data[i * 4], 4);
    return v;
  }
  int64_t v;
  std::memcpy(&v, &data[i * 8], 8);
  return v;
}

// Whether onnxruntime must accept and run the case (`indices`: VQGather's index bytes).
bool expect_valid(const Case& c, const Derived& d, const std::vector<uint8_t>& indices) {
  if (!d.ok) return false;
  if (!c.x.present || !c.codes.present || !c.codebooks.present) return false;
  if (c.gather) {
    if (c.has_bias) return false;  // a fourth input
    if (c.x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 && c.x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64)
      return false;
    const int64_t V = attr(c, kN);
    for (uint64_t i = 0, n = element_count(c.x.shape); i < n; ++i) {
      const int64_t v = index_value(c, indices, i);
      if (v < -V || v >= V) return false;
    }
  } else if (c.x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || c.x.shape.empty() ||
             c.x.shape.back() != attr(c, kK)) {
    return false;
  }
  if (c.codes.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 || c.codes.shape.size() != 1 ||
      static_cast<uint64_t>(c.codes.shape[0]) != d.packed)
    return false;
  if ((c.codebooks.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT &&
       c.codebooks.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) ||
      c.codebooks.shape != d.codebooks_shape)
    return false;
  if (c.has_bias && c.bias.present &&
      (c.bias.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || c.bias.shape.size() != 1 ||
       c.bias.shape[0] != attr(c, kN)))
    return false;
  return true;
}

// ---------------------------------------------------------------------------------------
// Case generation: a valid layout, then mutations.
const int64_t kInteresting[] = {-1, 0, 1, 2, 3, 4, 7, 8, 9, 16, 31, 32, 33, 63, 64, 99, 255, 256,
                                1 << 20, int64_t{1} << 31, int64_t{1} << 32, int64_t{1} << 40,
                                int64_t{1} << 62, std::numeric_limits<int64_t>::max(),
                                std::numeric_limits<int64_t>::min(), -(int64_t{1} << 32)};

const ONNXTensorElementDataType kTypes[] = {
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8,   ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64,  ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL};

size_t element_size(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return 8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return 4;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return 2;
    default: return 1;
  }
}

void mutate_shape(Reader& in, std::vector<int64_t>* shape, std::string* log, const char* name) {
  switch (in.range(0, 4)) {
    case 0:  // one dimension off by a little
      if (!shape->empty()) {
        auto& dim = (*shape)[in.range(0, static_cast<int64_t>(shape->size()) - 1)];
        dim = std::max<int64_t>(0, dim + in.range(-2, 2));
      }
      break;
    case 1: shape->push_back(in.range(1, 2)); break;  // extra dimension
    case 2:
      if (!shape->empty()) shape->pop_back();  // one dimension fewer (may become a scalar)
      break;
    case 3:
      if (!shape->empty()) (*shape)[0] = 0;  // empty
      break;
    default: std::reverse(shape->begin(), shape->end()); break;
  }
  *log += std::string(" shape(") + name + ")";
}

Case make_case(Reader& in) {
  Case c;
  c.gather = in.coin(35);
  const int64_t axis = in.range(0, 1);
  int64_t bits = in.range(1, 8);
  int64_t version = 1;
  if (axis == 0 && version_supported(kV2) && in.coin(30)) version = kV2, bits = kV2Bits;
  const int64_t K = in.range(1, 48), N = in.range(1, 48);
  int64_t sub = in.range(1, 9);
  if (axis == 0 && version == 1 && version_supported(kV3) && in.coin(20)) version = kV3, bits = 8, sub = in.range(2, 9);
  const int64_t T = in.range(1, 3);
  const int64_t R = axis == 0 ? N : K, L = axis == 0 ? K : N;
  const int64_t group = in.coin(50) ? R : in.range(1, R);
  const int64_t per = in.range(0, 1);
  const int64_t values[schema::kNumAttributes] = {
      version, K, N, bits, sub, static_cast<int64_t>(ceil_div(L, sub)), T, axis, group, per};
  for (int i = 0; i < schema::kNumAttributes; ++i) c.attrs[i] = {AttrKind::kInt, values[i]};

  const Derived d = derive(c);
  c.x.shape.clear();
  const int rank = static_cast<int>(in.range(1, 4));
  for (int i = 0; i + 1 < rank; ++i) c.x.shape.push_back(in.range(0, 4) == 0 ? in.range(0, 1) : in.range(1, 5));
  // Now and then enough rows for the tile GEMM at every threshold of the chooser (<= 64).
  if (rank > 1 && in.range(0, 8) == 0) c.x.shape[0] = in.range(60, 70);
  c.x.shape.push_back(K);
  if (c.gather) {  // indices: int64 or int32, rank 0..3, dimensions 0..6
    c.x.type = in.coin(60) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    c.x.shape.clear();
    const int index_rank = static_cast<int>(in.range(0, 3));
    for (int i = 0; i < index_rank; ++i) c.x.shape.push_back(in.range(0, 9) == 0 ? 0 : in.range(1, 6));
    c.bad_index = in.coin(15) ? static_cast<int>(in.range(1, 2)) : 0;
  }
  c.codes.type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  c.codes.shape = {static_cast<int64_t>(d.packed)};
  c.codebooks.type = in.coin(25) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  c.codebooks.shape = d.codebooks_shape;
  c.has_bias = !c.gather && in.coin(50);
  c.bias.shape = {N};
  c.codes.initializer = in.coin(60);
  c.codebooks.initializer = in.coin(60);
  c.bias.initializer = in.coin(50);
  c.x.initializer = in.coin(5);
  c.threads = in.coin(20) ? 2 : 1;
  c.optimize = in.coin(30);
  c.nonfinite = in.coin(5) ? static_cast<int>(in.range(1, 2)) : 0;

  const int mutations = in.coin(35) ? 0 : static_cast<int>(in.range(1, 4));
  for (int m = 0; m < mutations; ++m) {
    switch (in.range(0, 11)) {
      case 0: case 1: case 2: {  // an attribute takes an interesting value
        const int i = static_cast<int>(in.range(0, schema::kNumAttributes - 1));
        const int64_t old = c.attrs[i].value;
        const int64_t pick = in.range(0, static_cast<int64_t>(std::size(kInteresting)) + 1);
        const int64_t step = pick == static_cast<int64_t>(std::size(kInteresting)) ? 1 : -1;
        c.attrs[i].value = pick < static_cast<int64_t>(std::size(kInteresting))
                               ? kInteresting[pick]  // else old +- 1, wrapping like the int64 it becomes
                               : static_cast<int64_t>(static_cast<uint64_t>(old) + static_cast<uint64_t>(step));
        c.mutations += " attr(" + std::string(schema::kAttributes[i].name) + "=" +
                       std::to_string(c.attrs[i].value) + ")";
        break;
      }
      case 3: {  // an attribute missing or of the wrong type
        const int i = static_cast<int>(in.range(0, schema::kNumAttributes - 1));
        c.attrs[i].kind = static_cast<AttrKind>(in.range(1, 3));
        c.mutations += " attrkind(" + std::string(schema::kAttributes[i].name) + ")";
        break;
      }
      case 4: mutate_shape(in, &c.x.shape, &c.mutations, "X"); break;
      case 5: mutate_shape(in, &c.codes.shape, &c.mutations, "codes"); break;
      case 6: mutate_shape(in, &c.codebooks.shape, &c.mutations, "codebooks"); break;
      case 7: c.has_bias = true; mutate_shape(in, &c.bias.shape, &c.mutations, "bias"); break;
      case 8: {  // a wrong dtype
        Tensor* t[] = {&c.x, &c.codes, &c.codebooks, &c.bias};
        const int which = static_cast<int>(in.range(0, 3));
        t[which]->type = kTypes[in.range(0, static_cast<int64_t>(std::size(kTypes)) - 1)];
        if (which == 3) c.has_bias = true;
        c.mutations += " dtype(" + std::to_string(which) + "=" + std::to_string(t[which]->type) + ")";
        break;
      }
      case 9: {  // a required input left out (empty name)
        Tensor* t[] = {&c.x, &c.codes, &c.codebooks, &c.bias};
        const int which = static_cast<int>(in.range(0, 3));
        t[which]->present = false;
        c.mutations += " absent(" + std::to_string(which) + ")";
        break;
      }
      case 10: {  // codes length consistent with a *different* bits/version
        const int64_t wrong_bits = in.range(1, 8);
        uint64_t n = static_cast<uint64_t>(attr(c, kT)) * d.R * static_cast<uint64_t>(attr(c, kS));
        c.codes.shape = {static_cast<int64_t>(ceil_div(n * static_cast<uint64_t>(wrong_bits), 8))};
        c.mutations += " codes_for_bits(" + std::to_string(wrong_bits) + ")";
        break;
      }
      default: {  // the batch becomes empty
        if (!c.x.shape.empty()) c.x.shape[0] = 0;
        c.mutations += " empty_batch";
        break;
      }
    }
  }
  c.data_seed = in.word(8);
  return c;
}

// ---------------------------------------------------------------------------------------
// Tensor data and model serialization.
uint64_t element_count(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || !mul_ok(n, static_cast<uint64_t>(d), &n)) return std::numeric_limits<uint64_t>::max();
  }
  return n;
}

uint16_t float_to_half(float f) {  // finite values in range only; round toward zero is fine
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  const int exp = static_cast<int>((u >> 23) & 0xff) - 127 + 15;
  if (exp <= 0) return sign;
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7bff);
  return static_cast<uint16_t>(sign | (exp << 10) | ((u >> 13) & 0x3ff));
}

float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const int exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  float f;
  if (exp == 0) {
    f = std::ldexp(static_cast<float>(mant), -24);
  } else if (exp == 31) {
    f = mant ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    f = std::ldexp(static_cast<float>(mant | 0x400), exp - 25);
  }
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u |= sign;
  std::memcpy(&f, &u, 4);
  return f;
}

// Bytes of a tensor: floats in [-1, 1] (optionally with NaN/Inf), random bytes otherwise.
std::vector<uint8_t> make_data(const Tensor& t, std::mt19937_64& rng, bool nonfinite) {
  const uint64_t count = element_count(t.shape);
  std::vector<uint8_t> bytes(static_cast<size_t>(count) * element_size(t.type));
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  if (t.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
    for (uint64_t i = 0; i < count; ++i) {
      float v = uniform(rng);
      if (nonfinite && rng() % 7 == 0)
        v = rng() % 2 ? std::numeric_limits<float>::quiet_NaN() : -std::numeric_limits<float>::infinity();
      std::memcpy(&bytes[i * 4], &v, 4);
    }
  } else if (t.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
    for (uint64_t i = 0; i < count; ++i) {
      uint16_t h = float_to_half(uniform(rng));
      if (nonfinite && rng() % 7 == 0) h = rng() % 2 ? 0x7e00 : 0xfc00;
      std::memcpy(&bytes[i * 2], &h, 2);
    }
  } else if (t.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL) {
    for (auto& b : bytes) b = static_cast<uint8_t>(rng() & 1);
  } else {
    for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  }
  return bytes;
}

struct Pb {  // a minimal protobuf writer
  std::string s;
  void varint(uint64_t v) {
    while (v >= 0x80) s.push_back(static_cast<char>(v | 0x80)), v >>= 7;
    s.push_back(static_cast<char>(v));
  }
  void tag(int field, int wire) { varint((static_cast<uint64_t>(field) << 3) | wire); }
  void integer(int field, int64_t v) { tag(field, 0), varint(static_cast<uint64_t>(v)); }
  void bytes(int field, const std::string& b) { tag(field, 2), varint(b.size()), s += b; }
  void f32(int field, float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    tag(field, 5);
    for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>(u >> (8 * i)));
  }
};

std::string value_info(const std::string& name, ONNXTensorElementDataType type) {
  Pb tensor_type;
  tensor_type.integer(1, type);  // elem_type; no shape: any shape is accepted
  Pb type_proto;
  type_proto.bytes(1, tensor_type.s);
  Pb vi;
  vi.bytes(1, name);
  vi.bytes(2, type_proto.s);
  return vi.s;
}

std::string tensor_proto(const std::string& name, const Tensor& t, const std::vector<uint8_t>& data) {
  Pb p;
  for (int64_t d : t.shape) p.integer(1, d);
  p.integer(2, t.type);
  p.bytes(8, name);
  p.bytes(9, std::string(data.begin(), data.end()));
  return p.s;
}

struct Model {
  std::string bytes;
  std::vector<std::string> feed_names;
  std::vector<const Tensor*> feeds;
  std::vector<std::vector<uint8_t>> feed_data;
  std::vector<std::vector<uint8_t>> data;  // per tensor: X, codes, codebooks, bias
};

// VQGather's indices: uniform in [-V, V-1] (V as the attribute says, within reason), then
// with bad_index one value just outside (-V-1 or V) or an extreme one.
void fill_indices(const Case& c, std::mt19937_64& rng, std::vector<uint8_t>* bytes) {
  const bool wide = c.x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  if (!wide && c.x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) return;  // keep the random bytes
  const size_t size = wide ? 8 : 4, count = bytes->size() / size;
  const int64_t V = std::clamp<int64_t>(attr(c, kN), 1, int64_t{1} << 30);
  auto put = [&](size_t i, int64_t v) {
    if (wide) {
      std::memcpy(&(*bytes)[i * 8], &v, 8);
    } else {
      const int32_t n = static_cast<int32_t>(std::clamp<int64_t>(v, INT32_MIN, INT32_MAX));
      std::memcpy(&(*bytes)[i * 4], &n, 4);
    }
  };
  for (size_t i = 0; i < count; ++i) put(i, static_cast<int64_t>(rng() % (2 * V)) - V);
  if (c.bad_index && count) {
    const int64_t extremes[] = {std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(),
                                INT32_MIN, INT32_MAX, int64_t{1} << 32, -(int64_t{1} << 32) - 1};
    const int64_t bad = c.bad_index == 1 ? (rng() % 2 ? V : -V - 1) : extremes[rng() % std::size(extremes)];
    put(rng() % count, bad);
  }
}

Model build_model(const Case& c) {
  Model model;
  std::mt19937_64 rng(c.data_seed);
  const Tensor* tensors[] = {&c.x, &c.codes, &c.codebooks, &c.bias};
  const char* names[] = {"X", "codes", "codebooks", "bias"};
  Pb graph, node;
  const int inputs = c.has_bias ? 4 : 3;
  for (int i = 0; i < 4; ++i)
    model.data.push_back(make_data(*tensors[i], rng, (i == 2 && c.nonfinite == 1) || (i == 0 && c.nonfinite == 2)));
  if (c.gather) fill_indices(c, rng, &model.data[0]);
  for (int i = 0; i < inputs; ++i) {
    const Tensor& t = *tensors[i];
    node.bytes(1, t.present ? names[i] : "");
    if (!t.present) continue;
    if (t.initializer) {
      graph.bytes(5, tensor_proto(names[i], t, model.data[i]));
    } else {
      graph.bytes(11, value_info(names[i], t.type));
      model.feed_names.push_back(names[i]);
      model.feeds.push_back(&t);
      model.feed_data.push_back(model.data[i]);
    }
  }
  node.bytes(2, "Y");
  node.bytes(3, "vq_node");
  node.bytes(4, c.gather ? schema::kGatherOpType : schema::kOpType);
  for (int i = 0; i < schema::kNumAttributes; ++i) {
    const Attr& a = c.attrs[i];
    if (a.kind == AttrKind::kMissing) continue;
    Pb ap;
    ap.bytes(1, schema::kAttributes[i].name);
    if (a.kind == AttrKind::kInt) ap.integer(3, a.value), ap.integer(20, 2);
    if (a.kind == AttrKind::kFloat) ap.f32(2, static_cast<float>(a.value)), ap.integer(20, 1);
    if (a.kind == AttrKind::kString) ap.bytes(4, std::to_string(a.value)), ap.integer(20, 3);
    node.bytes(5, ap.s);
  }
  node.bytes(7, schema::kDomain);
  graph.bytes(1, node.s);
  graph.bytes(2, "fuzz");
  graph.bytes(12, value_info("Y", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT));
  Pb m;
  m.integer(1, 8);  // ir_version
  Pb opset, custom;
  opset.bytes(1, ""), opset.integer(2, 17);
  custom.bytes(1, schema::kDomain), custom.integer(2, schema::kDomainVersion);
  m.bytes(8, opset.s);
  m.bytes(8, custom.s);
  m.bytes(7, graph.s);
  model.bytes = m.s;
  return model;
}

// ---------------------------------------------------------------------------------------
// The double-precision oracle: decode W_hat, then matmul.
unsigned code_at(const Case& c, const std::vector<uint8_t>& stream, uint64_t t, uint64_t r, uint64_t s,
                 uint64_t R) {
  const uint64_t S = static_cast<uint64_t>(attr(c, kS));
  const unsigned bits = static_cast<unsigned>(attr(c, kBits));
  if (attr(c, kVersion) == kV2) {
    const uint64_t E = static_cast<uint64_t>(attr(c, kT)) * S, e = t * S + s;
    const uint64_t block = r / kV2BlockRows, j = r % kV2BlockRows;
    const uint8_t byte = stream[(block * E + e) * kV2GroupBytes + j % 16];
    return j < 16 ? byte & 15u : byte >> 4;
  }
  if (attr(c, kVersion) == kV3) {
    const uint64_t E = static_cast<uint64_t>(attr(c, kT)) * S, e = t * S + s;
    return stream[((r / kV3BlockRows) * E + e) * kV3BlockRows + r % kV3BlockRows];
  }
  const uint64_t index = (t * R + r) * S + s;
  unsigned code = 0;
  for (unsigned b = 0; b < bits; ++b) {
    const uint64_t bit = index * bits + b;
    code |= ((stream[bit / 8] >> (bit % 8)) & 1u) << b;
  }
  return code;
}

float codebook_value(const Case& c, const std::vector<uint8_t>& books, uint64_t flat) {
  if (c.codebooks.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
    uint16_t h;
    std::memcpy(&h, &books[flat * 2], 2);
    return half_to_float(h);
  }
  float f;
  std::memcpy(&f, &books[flat * 4], 4);
  return f;
}

[[noreturn]] void finding(const Case& c, const std::string& what) {
  std::fprintf(stderr, "\nFUZZ FINDING: %s\n  attributes:", what.c_str());
  for (int i = 0; i < schema::kNumAttributes; ++i)
    std::fprintf(stderr, " %s=%lld%s", schema::kAttributes[i].name,
                 static_cast<long long>(c.attrs[i].value),
                 c.attrs[i].kind == AttrKind::kInt ? "" : "(not int)");
  auto shape = [](const Tensor& t) {
    std::string s = "[";
    for (size_t i = 0; i < t.shape.size(); ++i) s += (i ? "," : "") + std::to_string(t.shape[i]);
    return s + "] type " + std::to_string(t.type) + (t.present ? "" : " absent");
  };
  std::fprintf(stderr, "\n  X %s\n  codes %s\n  codebooks %s\n  bias %s %s\n  mutations:%s\n",
               shape(c.x).c_str(), shape(c.codes).c_str(), shape(c.codebooks).c_str(),
               c.has_bias ? "" : "(none)", shape(c.bias).c_str(), c.mutations.c_str());
  std::fflush(stderr);
  std::abort();
}

bool int8_panels();  // whether the library runs the panel GEMM's int8 tier (Runtime, below)

// The int8 tier's worst case for output (m, n): X rounded to half a step of its row's max
// |x| / 127, W to half a step of its column's (scalar codebooks: of the largest codeword),
// |xw - x'w'| <= sum_k sx/2 |w| + sw/2 |x| + sx sw / 4.
double int8_bound(const float* x, uint64_t K, const std::vector<double>& w, uint64_t N, uint64_t m, uint64_t n,
                  double row_max, double column_max) {
  const double sx = row_max / 127.0, sw = column_max / 127.0;
  double sum = 0.0;
  for (uint64_t k = 0; k < K; ++k)
    sum += 0.5 * sx * std::fabs(w[k * N + n]) + 0.5 * sw * std::fabs(static_cast<double>(x[m * K + k])) + 0.25 * sx * sw;
  return 1.01 * sum;
}

void check_output(const Case& c, const Derived& d, const Model& model, const float* y, size_t y_count) {
  const uint64_t K = static_cast<uint64_t>(attr(c, kK)), N = static_cast<uint64_t>(attr(c, kN));
  const uint64_t M = element_count(c.x.shape) / K;
  if (y_count != M * N) finding(c, "output has " + std::to_string(y_count) + " values, expected M*N");
  if (c.nonfinite) return;  // NaN/Inf propagate however the summation order goes
  const uint64_t sub = static_cast<uint64_t>(attr(c, kD)), group = static_cast<uint64_t>(attr(c, kGroup));
  const uint64_t T = static_cast<uint64_t>(attr(c, kT));
  const bool axis0 = attr(c, kAxis) == 0;
  // W[k][n], decoded in double.
  std::vector<double> w(K * N, 0.0);
  for (uint64_t r = 0; r < d.R; ++r)
    for (uint64_t pos = 0; pos < d.L; ++pos) {
      const uint64_t s = pos / sub, j = pos % sub;
      double v = 0.0;
      for (uint64_t t = 0; t < T; ++t) {
        const unsigned code = code_at(c, model.data[1], t, r, s, d.R);
        const uint64_t flat = ((((t * d.Gs + (d.Gs > 1 ? s : 0)) * d.Gr + r / group) * d.ncw + code) * sub) + j;
        v += codebook_value(c, model.data[2], flat);
      }
      if (axis0) w[pos * N + r] = v; else w[r * N + pos] = v;
    }
  const float* x = reinterpret_cast<const float*>(model.data[0].data());
  const float* bias = c.has_bias && c.bias.present ? reinterpret_cast<const float*>(model.data[3].data()) : nullptr;
  // format_versions 2 and 3 may run on uint8-quantized tables (one scale per input row and
  // row group, |error| <= scale/2 per table entry, scale = widest table range / 255).
  const bool quantized = attr(c, kVersion) == kV2 || attr(c, kVersion) == kV3;
  const uint64_t S = static_cast<uint64_t>(attr(c, kS));
  // The int8 tier (any layout on the tile path): per-column maxima of W, and for scalar
  // codebooks (whose codewords quantize whole) the largest codeword.
  std::vector<double> column_max(N, 0.0);
  if (int8_panels()) {
    for (uint64_t k = 0; k < K; ++k)
      for (uint64_t n = 0; n < N; ++n) column_max[n] = std::max(column_max[n], std::fabs(w[k * N + n]));
    if (sub == 1 && T == 1) {
      double largest = 0.0;
      const size_t values = model.data[2].size() / (c.codebooks.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? 2 : 4);
      for (size_t i = 0; i < values; ++i) largest = std::max(largest, std::fabs(double(codebook_value(c, model.data[2], i))));
      for (uint64_t n = 0; n < N; ++n) column_max[n] = std::max(column_max[n], largest);
    }
  }
  for (uint64_t m = 0; m < M; ++m) {
    double quantization = 0.0;
    if (quantized) {
      for (uint64_t g = 0; g < d.Gr; ++g) {
        double widest = 0.0;
        for (uint64_t t = 0; t < T; ++t)
          for (uint64_t s = 0; s < S; ++s) {
            double lo = INFINITY, hi = -INFINITY;
            for (uint64_t code = 0; code < d.ncw; ++code) {
              double v = 0.0;
              for (uint64_t j = 0; j < sub && s * sub + j < d.L; ++j) {
                const uint64_t flat = (((t * d.Gs + (d.Gs > 1 ? s : 0)) * d.Gr + g) * d.ncw + code) * sub + j;
                v += static_cast<double>(x[m * K + s * sub + j]) * codebook_value(c, model.data[2], flat);
              }
              lo = std::min(lo, v), hi = std::max(hi, v);
            }
            widest = std::max(widest, hi - lo);
          }
        quantization = std::max(quantization, static_cast<double>(T * S) * widest / 255.0);
      }
    }
    double row_max = 0.0;
    for (uint64_t k = 0; k < K; ++k) row_max = std::max(row_max, std::fabs(static_cast<double>(x[m * K + k])));
    for (uint64_t n = 0; n < N; ++n) {
      double ref = bias ? bias[n] : 0.0, scale = bias ? std::fabs(bias[n]) : 0.0;
      for (uint64_t k = 0; k < K; ++k) {
        ref += static_cast<double>(x[m * K + k]) * w[k * N + n];
        scale += std::fabs(static_cast<double>(x[m * K + k]) * w[k * N + n]);
      }
      const double int8 = int8_panels() ? int8_bound(x, K, w, N, m, n, row_max, column_max[n]) : 0.0;
      const double got = y[m * N + n];
      if (!(std::fabs(got - ref) <= 1e-5 * scale + 1e-6 + quantization + int8))
        finding(c, "wrong output at [" + std::to_string(m) + ", " + std::to_string(n) + "]: got " +
                       std::to_string(got) + ", oracle " + std::to_string(ref));
    }
  }
}

// VQGather: Y[i, k] = T_hat[idx[i], k], T_hat = W_hat^T decoded in double.
void check_gather_output(const Case& c, const Derived& d, const Model& model, const float* y,
                         size_t y_count) {
  const uint64_t K = static_cast<uint64_t>(attr(c, kK)), V = static_cast<uint64_t>(attr(c, kN));
  const uint64_t count = element_count(c.x.shape);
  if (y_count != count * K) finding(c, "gather output has " + std::to_string(y_count) + " values, expected count*D");
  if (c.nonfinite == 1) return;  // NaN/Inf codebooks
  const uint64_t sub = static_cast<uint64_t>(attr(c, kD)), group = static_cast<uint64_t>(attr(c, kGroup));
  const uint64_t T = static_cast<uint64_t>(attr(c, kT));
  const bool axis0 = attr(c, kAxis) == 0;
  for (uint64_t i = 0; i < count; ++i) {
    const int64_t raw = index_value(c, model.data[0], i);
    const uint64_t v = static_cast<uint64_t>(raw < 0 ? raw + static_cast<int64_t>(V) : raw);
    for (uint64_t k = 0; k < K; ++k) {
      const uint64_t r = axis0 ? v : k, pos = axis0 ? k : v, s = pos / sub, j = pos % sub;
      double ref = 0.0, scale = 0.0;
      for (uint64_t t = 0; t < T; ++t) {
        const unsigned code = code_at(c, model.data[1], t, r, s, d.R);
        const uint64_t flat = ((((t * d.Gs + (d.Gs > 1 ? s : 0)) * d.Gr + r / group) * d.ncw + code) * sub) + j;
        const double w = codebook_value(c, model.data[2], flat);
        ref += w, scale += std::fabs(w);
      }
      const double got = y[i * K + k];
      if (!(std::fabs(got - ref) <= 1e-6 * scale))
        finding(c, "wrong gather output at [" + std::to_string(i) + ", " + std::to_string(k) + "] (row " +
                       std::to_string(v) + "): got " + std::to_string(got) + ", oracle " + std::to_string(ref));
    }
  }
}

// Our op's messages name the node and the tensor or attribute at fault.
void check_message(const Case& c, const std::string& message) {
  if (message.find("VQMatMul node") == std::string::npos &&
      message.find("VQGather node") == std::string::npos)
    return;  // onnxruntime's own checks
  static const char* kNames[] = {"X ", "indices", "codes", "codebooks", "bias", "attribute", "format_version",
                                 "in_features", "out_features", "bits", "subvector_len",
                                 "num_subspaces", "stages", "axis", "group_size",
                                 "codebook_per_subspace", "too large"};
  for (const char* name : kNames)
    if (message.find(name) != std::string::npos) return;
  finding(c, "error message names no tensor or attribute: " + message);
}

// ---------------------------------------------------------------------------------------
// onnxruntime plumbing.
using RegisterFn = OrtStatus* (*)(OrtSessionOptions*, const OrtApiBase*);

// Sessions share the environment's thread pools (two intra-op threads, so the kernel's
// ParallelFor path runs too): creating per-session pools would dominate the run time.
Ort::Env make_env() {
  Ort::ThreadingOptions threading;
  threading.SetGlobalIntraOpNumThreads(2);
  threading.SetGlobalInterOpNumThreads(1);
  threading.SetGlobalSpinControl(0);
  return Ort::Env(threading, ORT_LOGGING_LEVEL_FATAL, "onnxvq-fuzz");
}

struct Runtime {
  Ort::Env env = make_env();
  RegisterFn register_ops = nullptr;
  Runtime() {
    const char* path = std::getenv("ONNXVQ_FUZZ_LIBRARY");
#ifdef ONNXVQ_FUZZ_DEFAULT_LIBRARY
    if (path == nullptr || !*path) path = ONNXVQ_FUZZ_DEFAULT_LIBRARY;
#endif
    if (path == nullptr) {
      std::fprintf(stderr, "set ONNXVQ_FUZZ_LIBRARY to the custom-op library\n");
      std::exit(2);
    }
    void* handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      std::fprintf(stderr, "cannot load %s: %s\n", path, dlerror());
      std::exit(2);
    }
    register_ops = reinterpret_cast<RegisterFn>(dlsym(handle, "RegisterCustomOps"));
    if (register_ops == nullptr) {
      std::fprintf(stderr, "%s has no RegisterCustomOps\n", path);
      std::exit(2);
    }
    using FlagFn = int (*)();
    const auto int8 = reinterpret_cast<FlagFn>(dlsym(handle, "onnxvq_int8_panels"));
    int8_panels = int8 != nullptr && int8() != 0;
  }
  bool int8_panels = false;  // the library's panel GEMM runs its int8 tier (vq_kernel.h)
};

Runtime& runtime() {
  static Runtime* rt = new Runtime();  // never destroyed: sessions may outlive static teardown
  return *rt;
}
bool int8_panels() { return runtime().int8_panels; }

struct Stats {
  uint64_t cases = 0, valid = 0, ran = 0, rejected_at_load = 0, rejected_at_run = 0;
  uint64_t gather_cases = 0, gather_ran = 0, gather_bad_index = 0;
} g_stats;

}  // namespace

extern "C" void onnxvq_fuzz_print_stats() {
  std::fprintf(stderr,
               "onnxvq fuzz: %llu cases (%llu valid and run through the oracle, %llu invalid "
               "rejected at load, %llu invalid rejected at run), 0 findings; VQGather: %llu cases, "
               "%llu valid and run, %llu with an out-of-range index rejected\n",
               static_cast<unsigned long long>(g_stats.cases), static_cast<unsigned long long>(g_stats.ran),
               static_cast<unsigned long long>(g_stats.rejected_at_load),
               static_cast<unsigned long long>(g_stats.rejected_at_run),
               static_cast<unsigned long long>(g_stats.gather_cases),
               static_cast<unsigned long long>(g_stats.gather_ran),
               static_cast<unsigned long long>(g_stats.gather_bad_index));
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::atexit(onnxvq_fuzz_print_stats);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  const Case c = make_case(in);
  ++g_stats.cases;
  for (const Tensor* t : {&c.x, &c.codes, &c.codebooks, &c.bias})
    if (element_count(t->shape) > (uint64_t{1} << 22)) return 0;  // keep every case small
  const Derived d = derive(c);
  const Model model = build_model(c);
  const bool valid = expect_valid(c, d, model.data[0]);
  g_stats.valid += valid;
  g_stats.gather_cases += c.gather;
  Runtime& rt = runtime();

  std::unique_ptr<Ort::Session> session;
  try {
    Ort::SessionOptions options;
    options.DisablePerSessionThreads();
    (void)c.threads;
    options.SetGraphOptimizationLevel(c.optimize ? GraphOptimizationLevel::ORT_ENABLE_ALL
                                                 : GraphOptimizationLevel::ORT_DISABLE_ALL);
    Ort::ThrowOnError(rt.register_ops(options, OrtGetApiBase()));
    session = std::make_unique<Ort::Session>(rt.env, model.bytes.data(), model.bytes.size(), options);
  } catch (const Ort::Exception& e) {
    if (valid) finding(c, std::string("valid model rejected at load: ") + e.what());
    check_message(c, e.what());
    ++g_stats.rejected_at_load;
    return 0;
  }

  Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<Ort::Value> feeds;
  std::vector<const char*> feed_names;
  for (size_t i = 0; i < model.feeds.size(); ++i) {
    const Tensor& t = *model.feeds[i];
    feeds.push_back(Ort::Value::CreateTensor(memory, const_cast<uint8_t*>(model.feed_data[i].data()),
                                             model.feed_data[i].size(), t.shape.data(), t.shape.size(),
                                             t.type));
    feed_names.push_back(model.feed_names[i].c_str());
  }
  const char* output_names[] = {"Y"};
  try {
    auto outputs = session->Run(Ort::RunOptions{nullptr}, feed_names.data(), feeds.data(), feeds.size(),
                                output_names, 1);
    if (!valid) finding(c, "invalid model accepted and run");
    auto info = outputs[0].GetTensorTypeAndShapeInfo();
    if (c.gather)
      check_gather_output(c, d, model, outputs[0].GetTensorData<float>(), info.GetElementCount());
    else
      check_output(c, d, model, outputs[0].GetTensorData<float>(), info.GetElementCount());
    ++g_stats.ran;
    g_stats.gather_ran += c.gather;
  } catch (const Ort::Exception& e) {
    if (valid) finding(c, std::string("valid model failed to run: ") + e.what());
    check_message(c, e.what());
    if (c.gather && c.bad_index && std::string(e.what()).find("out of range") != std::string::npos)
      ++g_stats.gather_bad_index;
    ++g_stats.rejected_at_run;
  }
  return 0;
}
