#pragma once
/// \file
/// \brief Token files in llm.c's format: 256 little-endian int32 header (magic 20240520, version 1,
/// token count), then `count` uint16 tokens; the file is exactly 1024 + 2 * count bytes.

#include <cstdint>
#include <string>
#include <vector>

namespace tapestry::io {

constexpr std::int32_t kTokenMagic = 20240520;
constexpr std::int32_t kTokenVersion = 1;
constexpr std::size_t kHeaderInts = 256;

/// Reads and checks a whole token file. Throws tapestry::Error naming the file and the problem.
std::vector<std::uint16_t> read_token_file(const std::string& path);

/// Writes a token file atomically: to `path.tmp`, then renamed over `path`.
void write_token_file(const std::string& path, const std::vector<std::uint16_t>& tokens);

/// Writes `bytes` to `path` through a temporary file, flushed to disk (fsync), and a rename, then
/// flushes the directory: a failure, a killed process or a node crash never leaves a half-written
/// file in place of good data.
void write_file_atomic(const std::string& path, const std::string& bytes);

/// fsync of a written file (throws tapestry::Error naming it on failure).
void sync_file(const std::string& path);
/// fsync of the directory that holds `path`, so that a rename in it survives a node crash (best
/// effort: file systems that cannot flush a directory are left as they are).
void sync_parent_dir(const std::string& path);

}  // namespace tapestry::io
