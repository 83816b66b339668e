#include "tapestry/io/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tapestry/core/error.hpp"

namespace tapestry::io {

namespace {
using json = nlohmann::json;

float bf16_to_float(std::uint16_t h) {
  const std::uint32_t u = std::uint32_t(h) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

float f16_to_float(std::uint16_t h) {  // IEEE half: sign, 5-bit exponent, 10-bit mantissa
  const std::uint32_t s = std::uint32_t(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  std::uint32_t u;
  if (e == 0x1f) {
    u = s | 0x7f800000u | (m << 13);  // inf, NaN
  } else if (e != 0) {
    u = s | ((e + 112) << 23) | (m << 13);
  } else if (m == 0) {
    u = s;
  } else {  // subnormal: normalise
    int shift = 0;
    std::uint32_t mm = m;
    while ((mm & 0x400) == 0) mm <<= 1, ++shift;
    u = s | (std::uint32_t(113 - shift) << 23) | ((mm & 0x3ff) << 13);
  }
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
}  // namespace

int st_dtype_size(const std::string& dtype) {
  if (dtype == "F32") return 4;
  if (dtype == "BF16" || dtype == "F16") return 2;
  return 0;
}

// ---------------------------------------------------------------- writer
struct SafetensorsWriter::Impl {
  std::string path, tmp;
  std::vector<StTensor> tensors;
  std::size_t next = 0;
  std::ofstream f;
};

SafetensorsWriter::SafetensorsWriter(std::string path, std::vector<StTensor> tensors,
                                     const std::map<std::string, std::string>& metadata)
    : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.path = std::move(path), m.tmp = m.path + ".tmp", m.tensors = std::move(tensors);
  json h = json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::uint64_t off = 0;
  for (auto& t : m.tensors) {
    const int es = st_dtype_size(t.dtype);
    require(es > 0, "safetensors: cannot write dtype '" + t.dtype + "'");
    std::uint64_t n = 1;
    for (auto d : t.shape) n *= std::uint64_t(d);
    t.begin = off, t.end = off + n * std::uint64_t(es);
    off = t.end;
    h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
  }
  data_bytes_ = off;
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned
  m.f.open(m.tmp, std::ios::binary | std::ios::trunc);
  require(bool(m.f), "cannot write '" + m.tmp + "'");
  const std::uint64_t len = header.size();
  unsigned char le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(len >> (8 * i));
  m.f.write(reinterpret_cast<const char*>(le), 8);
  m.f.write(header.data(), std::streamsize(header.size()));
}

SafetensorsWriter::~SafetensorsWriter() {
  if (impl_ && impl_->f.is_open()) {  // not finished: leave no file under either name
    impl_->f.close();
    std::remove(impl_->tmp.c_str());
  }
}

void SafetensorsWriter::write(const std::string& name, const void* data, std::size_t bytes) {
  auto& m = *impl_;
  require(m.next < m.tensors.size() && m.tensors[m.next].name == name,
          "safetensors writer: '" + name + "' written out of the declared order");
  const auto& t = m.tensors[m.next];
  require(bytes == t.end - t.begin, "safetensors writer: '" + name + "' has " + std::to_string(bytes) +
                                        " bytes, declared " + std::to_string(t.end - t.begin));
  m.f.write(static_cast<const char*>(data), std::streamsize(bytes));
  require(bool(m.f), "writing '" + m.tmp + "' failed (disk full?)");
  ++m.next;
}

void SafetensorsWriter::finish() {
  auto& m = *impl_;
  require(m.next == m.tensors.size(), "safetensors writer: " + std::to_string(m.tensors.size() - m.next) +
                                          " declared tensors not written to '" + m.path + "'");
  m.f.flush();
  require(bool(m.f), "writing '" + m.tmp + "' failed (disk full?)");
  m.f.close();
  std::error_code ec;
  std::filesystem::rename(m.tmp, m.path, ec);
  require(!ec, "cannot rename '" + m.tmp + "' to '" + m.path + "': " + ec.message());
}

// ---------------------------------------------------------------- reader
SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  require(fd >= 0, "cannot open safetensors file '" + path + "'");
  struct stat st {};
  ::fstat(fd, &st);
  const std::uint64_t size = std::uint64_t(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw Error("safetensors file '" + path + "' is truncated: " + std::to_string(size) + " bytes, no header");
  }
  map_bytes_ = std::size_t(size);
  map_ = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  require(map_ != MAP_FAILED, "cannot map safetensors file '" + path + "'");
  const auto* bytes = static_cast<const unsigned char*>(map_);
  std::uint64_t len = 0;
  for (int i = 7; i >= 0; --i) len = (len << 8) | bytes[i];
  require(len <= size - 8, "safetensors file '" + path + "': header length " + std::to_string(len) +
                               " runs past the end of the file (" + std::to_string(size) + " bytes)");
  json h;
  try {
    h = json::parse(bytes + 8, bytes + 8 + len);
  } catch (const json::exception& e) {
    throw Error("safetensors file '" + path + "': the header is not valid JSON (" + e.what() + ")");
  }
  require(h.is_object(), "safetensors file '" + path + "': the header is not a JSON object");
  data_ = bytes + 8 + len;
  const std::uint64_t data_size = size - 8 - len;
  std::vector<const StTensor*> by_offset;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it.value().is_object())
        for (auto m = it.value().begin(); m != it.value().end(); ++m)
          if (m.value().is_string()) metadata_[m.key()] = m.value().get<std::string>();
      continue;
    }
    const std::string where = "safetensors file '" + path + "': tensor " + it.key();
    const auto& v = it.value();
    StTensor t;
    t.name = it.key();
    try {
      t.dtype = v.at("dtype").get<std::string>();
      t.shape = v.at("shape").get<std::vector<std::int64_t>>();
      const auto off = v.at("data_offsets").get<std::vector<std::uint64_t>>();
      require(off.size() == 2, where + ": data_offsets is not [begin, end]");
      t.begin = off[0], t.end = off[1];
    } catch (const json::exception& e) {
      throw Error(where + ": bad header entry (" + e.what() + ")");
    }
    const int es = st_dtype_size(t.dtype);
    require(es > 0, where + " has dtype '" + t.dtype + "'; this program reads F32, BF16 and F16");
    std::uint64_t n = 1;
    for (auto d : t.shape) {
      require(d >= 0, where + " has a negative dimension");
      n *= std::uint64_t(d);
    }
    require(t.begin <= t.end && t.end <= data_size,
            where + ": data [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + ") lies outside the " +
                std::to_string(data_size) + " data bytes (truncated file?)");
    require(t.end - t.begin == n * std::uint64_t(es), where + ": " + std::to_string(t.end - t.begin) +
                                                          " bytes for " + std::to_string(n) + " " + t.dtype +
                                                          " elements");
    tensors_[t.name] = t;
  }
  for (const auto& [name, t] : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (std::size_t i = 1; i < by_offset.size(); ++i)
    require(by_offset[i]->begin >= by_offset[i - 1]->end || by_offset[i - 1]->begin == by_offset[i - 1]->end,
            "safetensors file '" + path + "': tensors " + by_offset[i - 1]->name + " and " + by_offset[i]->name +
                " overlap");
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr && map_ != MAP_FAILED) ::munmap(map_, map_bytes_);
}

const StTensor* SafetensorsFile::find(const std::string& name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

void SafetensorsFile::read(const std::string& name, std::uint64_t first, std::uint64_t n, std::uint64_t stride,
                           float* dst) const {
  const StTensor* t = find(name);
  require(t != nullptr, "safetensors file '" + path_ + "' has no tensor " + name);
  const int es = st_dtype_size(t->dtype);
  const std::uint64_t count = (t->end - t->begin) / std::uint64_t(es);
  require(n == 0 || first + (n - 1) * stride < count, "safetensors: read past the end of " + name);
  const unsigned char* p = data_ + t->begin;
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::uint64_t e = first + i * stride;
    if (t->dtype == "F32") {
      std::memcpy(dst + i, p + 4 * e, 4);
    } else {
      std::uint16_t h;
      std::memcpy(&h, p + 2 * e, 2);
      dst[i] = t->dtype == "BF16" ? bf16_to_float(h) : f16_to_float(h);
    }
  }
}

}  // namespace tapestry::io
