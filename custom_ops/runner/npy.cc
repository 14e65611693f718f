#include "npy.h"

#include <cctype>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>

namespace npy {
namespace {

const char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;
constexpr size_t kHeaderAlignment = 64;  // NumPy pads the header so data starts aligned

struct DType {
  const char* descr;
  size_t size;
};
// Little-endian or byte-order-free ("|") types only.
constexpr DType kDTypes[] = {
    {"<f4", 4}, {"<f8", 8}, {"<f2", 2}, {"<i8", 8}, {"<i4", 4}, {"<i2", 2},
    {"|i1", 1}, {"<u8", 8}, {"<u4", 4}, {"<u2", 2}, {"|u1", 1}, {"|b1", 1},
};

[[noreturn]] void fail(const std::string& path, const std::string& message) {
  throw std::runtime_error(path + ": " + message);
}

// The text right after `'key':` in the header dict, leading spaces skipped.
const char* find_value(const std::string& header, const std::string& key) {
  const size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) return nullptr;
  const size_t colon = header.find(':', at);
  if (colon == std::string::npos) return nullptr;
  const char* p = header.c_str() + colon + 1;
  while (std::isspace(static_cast<unsigned char>(*p))) ++p;
  return p;
}

std::string parse_descr(const std::string& header, const std::string& path) {
  const char* p = find_value(header, "descr");
  if (!p || (*p != '\'' && *p != '"')) fail(path, "header has no 'descr' string");
  const char* end = std::strchr(p + 1, *p);
  if (!end) fail(path, "unterminated 'descr' string");
  return std::string(p + 1, end);
}

bool parse_fortran_order(const std::string& header, const std::string& path) {
  const char* p = find_value(header, "fortran_order");
  if (!p) fail(path, "header has no 'fortran_order'");
  return std::strncmp(p, "True", 4) == 0;
}

// "(2, 3)", "(5,)" or "()" (a scalar).
std::vector<int64_t> parse_shape(const std::string& header, const std::string& path) {
  const char* p = find_value(header, "shape");
  if (!p || *p != '(') fail(path, "header has no 'shape' tuple");
  std::vector<int64_t> shape;
  for (++p; *p && *p != ')';) {
    if (std::isdigit(static_cast<unsigned char>(*p))) {
      char* end = nullptr;
      shape.push_back(std::strtoll(p, &end, 10));
      p = end;
    } else if (*p == ',' || std::isspace(static_cast<unsigned char>(*p)) || *p == 'L') {
      ++p;  // separators; 'L' is Python 2's long suffix
    } else {
      fail(path, "bad character in 'shape'");
    }
  }
  if (*p != ')') fail(path, "unterminated 'shape' tuple");
  return shape;
}

uint32_t read_le(const unsigned char* bytes, size_t count) {
  uint32_t value = 0;
  for (size_t i = 0; i < count; ++i) value |= uint32_t{bytes[i]} << (8 * i);
  return value;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "(";
  for (int64_t dim : shape) text += std::to_string(dim) + ", ";
  if (shape.size() > 1) text.resize(text.size() - 2);  // (5,) keeps its comma, (2, 3) does not
  else if (shape.size() == 1) text.pop_back();
  return text + ")";
}

}  // namespace

size_t Array::element_count() const {
  size_t count = 1;
  for (int64_t dim : shape) count *= static_cast<size_t>(dim);
  return count;
}

size_t item_size(const std::string& descr) {
  for (const DType& type : kDTypes)
    if (descr == type.descr) return type.size;
  throw std::runtime_error("unsupported .npy dtype '" + descr + "'");
}

Array load(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) fail(path, "cannot open");
  const std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(file)),
                                         std::istreambuf_iterator<char>());
  if (bytes.size() < kMagicSize + 4 || std::memcmp(bytes.data(), kMagic, kMagicSize) != 0)
    fail(path, "not a .npy file");
  const unsigned major = bytes[kMagicSize];
  if (major < 1 || major > 3) fail(path, "unsupported .npy version " + std::to_string(major));
  // Version 1.0 stores the header length in 2 bytes, 2.0 and 3.0 (UTF-8 header) in 4.
  const size_t length_bytes = major == 1 ? 2 : 4;
  const size_t header_start = kMagicSize + 2 + length_bytes;
  if (bytes.size() < header_start) fail(path, "truncated header");
  const size_t header_size = read_le(bytes.data() + kMagicSize + 2, length_bytes);
  if (bytes.size() < header_start + header_size) fail(path, "truncated header");
  const std::string header(bytes.begin() + header_start,
                           bytes.begin() + header_start + header_size);

  Array array;
  array.descr = parse_descr(header, path);
  array.shape = parse_shape(header, path);
  if (parse_fortran_order(header, path)) fail(path, "Fortran-order arrays are not supported");
  size_t size = 0;
  try {
    size = item_size(array.descr);
  } catch (const std::exception& e) {
    fail(path, e.what());
  }
  const size_t data_bytes = array.element_count() * size;
  if (bytes.size() - header_start - header_size != data_bytes)
    fail(path, "has " + std::to_string(bytes.size() - header_start - header_size) +
                   " data bytes, shape " + shape_text(array.shape) + " needs " +
                   std::to_string(data_bytes));
  array.data.assign(bytes.begin() + header_start + header_size, bytes.end());
  return array;
}

void save(const std::string& path, const Array& array) {
  if (array.data.size() != array.element_count() * item_size(array.descr))
    fail(path, "array data size does not match its shape");
  std::string header = "{'descr': '" + array.descr + "', 'fortran_order': False, 'shape': " +
                       shape_text(array.shape) + ", }";
  // Pad with spaces and end with '\n' so the data starts on a 64-byte boundary.
  const bool version1 = header.size() + 1 + kMagicSize + 4 <= 65535;
  const size_t prefix = kMagicSize + 2 + (version1 ? 2 : 4);
  const size_t unpadded = prefix + header.size() + 1;
  header.append((kHeaderAlignment - unpadded % kHeaderAlignment) % kHeaderAlignment, ' ');
  header += '\n';

  std::string out(kMagic, kMagicSize);
  out += static_cast<char>(version1 ? 1 : 2);
  out += '\0';
  for (size_t i = 0; i < (version1 ? 2u : 4u); ++i)
    out += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  out += header;
  std::ofstream file(path, std::ios::binary);
  file.write(out.data(), static_cast<std::streamsize>(out.size()));
  file.write(reinterpret_cast<const char*>(array.data.data()),
             static_cast<std::streamsize>(array.data.size()));
  if (!file) fail(path, "cannot write");
}

}  // namespace npy
