#pragma once
/// \file
/// \brief A read-only memory map of a whole file (token datasets, `data prepare`'s inputs).

#include <cstdint>
#include <string>
#include <string_view>

namespace tapestry::io {

/// \brief MAP_SHARED, PROT_READ; the descriptor is closed once mapped. An empty file maps to
/// nothing (mmap of length 0 is invalid). Throws tapestry::Error "cannot open <kind> '<path>':
/// <why>" (likewise stat, map, or a path that is not a regular file); `kind` names the file's role
/// ("input"), or is empty.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path, const std::string& kind = "");
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const unsigned char* data() const { return data_; }
  std::uint64_t size() const { return size_; }
  std::string_view view() const { return {reinterpret_cast<const char*>(data_), size_}; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const unsigned char* data_ = nullptr;
  std::uint64_t size_ = 0;
};

}  // namespace tapestry::io
