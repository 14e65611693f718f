// A small reader and writer for NumPy's .npy format (versions 1.0 to 3.0), enough to move
// tensors between Python and the runner. Only C-order, little-endian arrays of the dtypes in
// npy.cc's table are supported (the runner's targets, x86_64 and aarch64, are little-endian).
// Format: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace npy {

/// A dense array: `descr` is NumPy's dtype string ("<f4", "<i8", "|u1", ...).
struct Array {
  std::string descr;
  std::vector<int64_t> shape;
  std::vector<unsigned char> data;  // row-major, element_count() * item_size(descr) bytes

  size_t element_count() const;
};

/// Bytes per element of a supported dtype string; throws std::runtime_error otherwise.
size_t item_size(const std::string& descr);

/// Reads a .npy file. Throws std::runtime_error naming the file and the problem.
Array load(const std::string& path);

/// Writes `array` as a version 1.0 file (2.0 if the header is too long for 1.0).
void save(const std::string& path, const Array& array);

}  // namespace npy
