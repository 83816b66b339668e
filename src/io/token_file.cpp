#include "tapestry/io/token_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tapestry/core/error.hpp"

namespace tapestry::io {

std::vector<std::uint16_t> read_token_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  require(bool(f), "cannot open token file '" + path + "'");
  const auto size = static_cast<std::int64_t>(f.tellg());
  f.seekg(0);
  std::int32_t header[kHeaderInts] = {};
  require(size >= std::int64_t(sizeof(header)),
          "token file '" + path + "' is truncated: " + std::to_string(size) +
              " bytes, shorter than the 1024-byte header");
  f.read(reinterpret_cast<char*>(header), sizeof(header));
  require(header[0] == kTokenMagic, "token file '" + path + "' has wrong magic " +
                                        std::to_string(header[0]) + " (expected " +
                                        std::to_string(kTokenMagic) + ")");
  require(header[1] == kTokenVersion, "token file '" + path + "' has unsupported version " +
                                          std::to_string(header[1]) + " (expected 1)");
  const std::int64_t count = header[2];
  require(count >= 0, "token file '" + path + "' has a negative token count");
  const std::int64_t expected = std::int64_t(sizeof(header)) + 2 * count;
  require(size == expected, "token file '" + path + "' is " + std::to_string(size) +
                                " bytes but its header promises " + std::to_string(count) +
                                " tokens (" + std::to_string(expected) + " bytes)");
  std::vector<std::uint16_t> tokens(static_cast<std::size_t>(count));
  f.read(reinterpret_cast<char*>(tokens.data()), std::streamsize(2 * count));
  require(bool(f), "token file '" + path + "': read failed");
  return tokens;
}

void sync_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  require(fd >= 0, "cannot open '" + path + "' to flush it to disk: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  require(rc == 0, "flushing '" + path + "' to disk failed: " + std::strerror(err));
}

void sync_parent_dir(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;  // a file system without directory handles: nothing to flush
  ::fsync(fd);          // some file systems refuse fsync on a directory (EINVAL): the rename stands
  ::close(fd);
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    require(bool(f), "cannot write '" + tmp + "'");
    f.write(bytes.data(), std::streamsize(bytes.size()));
    f.flush();
    if (!f) {
      std::remove(tmp.c_str());
      throw Error("writing '" + tmp + "' failed (disk full?)");
    }
  }
  try {
    sync_file(tmp);  // the bytes are on disk before the name points at them
  } catch (const Error&) {
    std::remove(tmp.c_str());
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error("cannot rename '" + tmp + "' to '" + path + "'");
  }
  sync_parent_dir(path);
}

void write_token_file(const std::string& path, const std::vector<std::uint16_t>& tokens) {
  require(tokens.size() <= 0x7fffffffu, "too many tokens for one file: " + std::to_string(tokens.size()));
  std::int32_t header[kHeaderInts] = {};
  header[0] = kTokenMagic;
  header[1] = kTokenVersion;
  header[2] = std::int32_t(tokens.size());
  std::string bytes(sizeof(header) + 2 * tokens.size(), '\0');
  std::memcpy(bytes.data(), header, sizeof(header));
  std::memcpy(bytes.data() + sizeof(header), tokens.data(), 2 * tokens.size());
  write_file_atomic(path, bytes);
}

}  // namespace tapestry::io
