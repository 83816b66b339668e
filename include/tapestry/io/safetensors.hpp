#pragma once
/// \file
/// \brief The safetensors format (Hugging Face): an 8-byte little-endian header length N, N bytes
/// of JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
/// "__metadata__": {...}}, then the raw little-endian data (offsets relative to its start).
/// Written and read here with nlohmann::json; no Hugging Face code.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace tapestry::io {

/// \brief One tensor of a safetensors file.
struct StTensor {
  std::string name;
  std::string dtype;                  ///< F32, BF16, F16 (read); F32 or BF16 (written)
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;   ///< byte offsets in the data section
};

/// Bytes per element of a safetensors dtype this program reads (F32, BF16, F16), else 0.
int st_dtype_size(const std::string& dtype);

/// \brief Writes one file tensor by tensor, in the order declared: `path.tmp` first, renamed to
/// `path` by finish() (a cut-short write never leaves a file under the final name).
class SafetensorsWriter {
 public:
  SafetensorsWriter(std::string path, std::vector<StTensor> tensors,
                    const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  /// The next tensor's bytes (its declared size exactly, in declaration order).
  void write(const std::string& name, const void* data, std::size_t bytes);
  /// Flushes, checks that every tensor was written, renames into place.
  void finish();
  std::uint64_t data_bytes() const { return data_bytes_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::uint64_t data_bytes_ = 0;
};

/// \brief A safetensors file opened for reading (memory-mapped). The header is validated on open:
/// its length, the JSON, every dtype, shape and offset (inside the file, sizes matching the shape,
/// no overlaps). Throws tapestry::Error naming the file and the tensor.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  const std::string& path() const { return path_; }
  const std::map<std::string, StTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// The tensor `name`, or nullptr.
  const StTensor* find(const std::string& name) const;
  /// n elements of tensor `name` from element `first` (row-major), every `stride` elements,
  /// converted to float into dst.
  void read(const std::string& name, std::uint64_t first, std::uint64_t n, std::uint64_t stride, float* dst) const;

 private:
  std::string path_;
  std::map<std::string, StTensor> tensors_;
  std::map<std::string, std::string> metadata_;
  const unsigned char* data_ = nullptr;  // start of the data section
  void* map_ = nullptr;
  std::size_t map_bytes_ = 0;
};

}  // namespace tapestry::io
