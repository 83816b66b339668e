// Token datasets on disk: llm.c token files and Megatron indexed datasets, memory-mapped for
// reading, streamed through temporaries for writing.
//
// llm.c (karpathy/llm.c dev/data/data_common.py): 256 int32 header (magic, version, count), then
// `count` tokens; uint16 for magic 20240520 version 1, uint32 for magic 20240801 version 7.
//
// Megatron (megatron/core/datasets/indexed_dataset.py, _IndexWriter / _IndexReader):
//   prefix.idx: "MMIDIDX\0\0" | u64 version = 1 | u8 dtype code | u64 S | u64 D
//               | int32 sequence_lengths[S] | int64 sequence_pointers[S] (bytes into .bin)
//               | int64 document_indices[D] (sequence index where each document starts; 0 .. S)
//   prefix.bin: the tokens.
// The arrays start at byte 34 and are unaligned, so every load goes through memcpy.
#include "tapestry/io/token_dataset.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "tapestry/core/error.hpp"
#include "tapestry/io/mapped_file.hpp"
#include "tapestry/io/token_file.hpp"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "token files are little-endian; so must the host be");

namespace tapestry::io {
namespace {

constexpr std::int32_t kLlmcMagic16 = kTokenMagic, kLlmcVersion16 = kTokenVersion;  // io/token_file.hpp
constexpr std::int32_t kLlmcMagic32 = 20240801, kLlmcVersion32 = 7;
constexpr std::uint64_t kLlmcHeaderBytes = kHeaderInts * 4;
constexpr std::uint64_t kLlmcMaxTokens = 0x7fffffffu;  // the header count is an int32
constexpr char kMegatronMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr std::uint64_t kMegatronHeaderBytes = 9 + 8 + 1 + 8 + 8;  // 34
constexpr std::uint8_t kDtypeInt32 = 4, kDtypeUint16 = 8;
constexpr std::size_t kWriteBuffer = std::size_t(4) << 20;
constexpr std::size_t kCopyChunk = std::size_t(8) << 20;

std::string q(const std::string& p) { return "'" + p + "'"; }
std::string errno_text() { return std::strerror(errno); }

template <class T>
T load(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

/// Token width of a dataset written for `vocab_size`: 2 when every id fits a uint16, else 4.
int width_for_vocab(std::uint64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }


void check_range(const std::string& name, std::uint64_t offset, std::uint64_t n, std::uint64_t total) {
  require(offset <= total && n <= total - offset,
          "reading tokens [" + std::to_string(offset) + ", " + std::to_string(offset) + " + " + std::to_string(n) +
              ") of " + q(name) + ", which has " + std::to_string(total) + " tokens: past the end");
}

/// Copies n tokens of width 2 or 4 from `src` to `out`, widening to uint32. `signed_ids`: the
/// tokens are int32 (Megatron), and a negative one is an error.
void copy_tokens(const unsigned char* src, int width, bool signed_ids, std::uint64_t first, std::uint64_t n,
                 std::uint32_t* out, const std::string& name) {
  if (n == 0) return;
  if (width == 2) {
    for (std::uint64_t i = 0; i < n; ++i) out[i] = load<std::uint16_t>(src + 2 * i);
    return;
  }
  std::memcpy(out, src, 4 * n);
  if (!signed_ids) return;
  for (std::uint64_t i = 0; i < n; ++i)
    if (out[i] > 0x7fffffffu)
      throw Error(q(name) + " holds a negative token id " + std::to_string(std::int32_t(out[i])) +
                  " at token " + std::to_string(first + i));
}

/// \brief An llm.c token file: one document.
class LlmcDataset final : public TokenDataset {
 public:
  explicit LlmcDataset(const std::string& path) : map_(path) {
    const std::string name = "token file " + q(path);
    // Not an llm.c file: perhaps the .bin of a Megatron dataset whose .idx is missing.
    const std::string hint = ends_with(path, ".bin") ? "; a Megatron " + q(path) + " needs its index " +
                                                           q(path.substr(0, path.size() - 4) + ".idx")
                                                     : "";
    require(map_.size() >= kLlmcHeaderBytes, name + " is truncated: " + std::to_string(map_.size()) +
                                                 " bytes, shorter than the 1024-byte header" + hint);
    const std::int32_t magic = load<std::int32_t>(map_.data());
    const std::int32_t version = load<std::int32_t>(map_.data() + 4);
    const std::int32_t count = load<std::int32_t>(map_.data() + 8);
    if (magic == kLlmcMagic16) {
      width_ = 2;
      require(version == kLlmcVersion16, name + " has unsupported version " + std::to_string(version) +
                                             " (expected 1 for magic 20240520)");
    } else if (magic == kLlmcMagic32) {
      width_ = 4;
      require(version == kLlmcVersion32, name + " has unsupported version " + std::to_string(version) +
                                             " (expected 7 for magic 20240801)");
    } else {
      throw Error(name + " has wrong magic " + std::to_string(magic) + " (expected 20240520 or 20240801" + hint + ")");
    }
    require(count >= 0, name + " has a negative token count " + std::to_string(count));
    count_ = std::uint64_t(count);
    const std::uint64_t expected = kLlmcHeaderBytes + std::uint64_t(width_) * count_;
    require(map_.size() == expected, name + " is " + std::to_string(map_.size()) + " bytes but its header promises " +
                                         std::to_string(count_) + " tokens (" + std::to_string(expected) + " bytes)");
  }

  std::uint64_t num_tokens() const override { return count_; }
  std::uint64_t num_documents() const override { return 1; }
  std::uint64_t document_start(std::uint64_t d) const override {
    require(d <= 1, "document " + std::to_string(d) + " of " + q(path()) + ", which has 1 document");
    return d == 0 ? 0 : count_;
  }
  void read(std::uint64_t offset, std::uint64_t n, std::uint32_t* out) const override {
    check_range(path(), offset, n, count_);
    copy_tokens(payload() + width_ * offset, width_, false, offset, n, out, path());
  }
  int token_bytes() const override { return width_; }
  std::string path() const override { return map_.path(); }
  std::string format_name() const override { return width_ == 2 ? "llm.c uint16" : "llm.c uint32"; }

  const unsigned char* payload() const { return map_.data() + kLlmcHeaderBytes; }

 private:
  MappedFile map_;
  int width_ = 2;
  std::uint64_t count_ = 0;
};

/// \brief A Megatron indexed dataset (prefix.bin + prefix.idx), validated on open in one pass over
/// the index: the sequences must lie back to back in .bin, as Megatron's writer lays them.
class MegatronDataset final : public TokenDataset {
 public:
  explicit MegatronDataset(const std::string& prefix)
      : prefix_(prefix), idx_(prefix + ".idx"), bin_(prefix + ".bin") {
    const std::string iname = q(idx_.path());
    const std::uint64_t isize = idx_.size();
    const unsigned char* p = idx_.data();
    require(isize >= kMegatronHeaderBytes, "Megatron index " + iname + " is truncated: " + std::to_string(isize) +
                                               " bytes, shorter than the 34-byte header");
    require(std::memcmp(p, kMegatronMagic, 9) == 0, "Megatron index " + iname + " has bad magic (expected \"MMIDIDX\\0\\0\")");
    const auto version = load<std::uint64_t>(p + 9);
    require(version == 1, "Megatron index " + iname + " has unsupported version " + std::to_string(version) +
                              " (expected 1)");
    const std::uint8_t code = p[17];
    require(code == kDtypeUint16 || code == kDtypeInt32,
            "Megatron index " + iname + " has unsupported dtype code " + std::to_string(code) +
                " (supported: 8 = uint16, 4 = int32)");
    width_ = code == kDtypeUint16 ? 2 : 4;
    S_ = load<std::uint64_t>(p + 18);
    D_ = load<std::uint64_t>(p + 26);
    // Bound the counts before multiplying, so nothing overflows.
    const bool sane = S_ < (std::uint64_t(1) << 58) && D_ < (std::uint64_t(1) << 58);
    const std::uint64_t expected = sane ? kMegatronHeaderBytes + 12 * S_ + 8 * D_ : 0;
    if (!sane || isize != expected) {
      std::string why = "Megatron index " + iname + " is " + std::to_string(isize) + " bytes but its header promises " +
                        std::to_string(S_) + " sequences and " + std::to_string(D_) + " document indices";
      if (sane) why += " (" + std::to_string(expected) + " bytes)";
      if (!sane || isize < expected) why += ": truncated or corrupt";
      if (sane && isize == expected + S_ && S_ > 0) why += "; multimodal indices (sequence modes) are not supported";
      throw Error(why);
    }
    require(D_ >= 1, "Megatron index " + iname + " has no document indices (expected at least the leading 0)");
    lengths_ = p + kMegatronHeaderBytes;
    pointers_ = lengths_ + 4 * S_;
    doc_idx_ = pointers_ + 8 * S_;

    std::uint64_t end = 0;  // byte offset in .bin where the sequences so far end
    for (std::uint64_t i = 0; i < S_; ++i) {
      const auto len = load<std::int32_t>(lengths_ + 4 * i);
      const auto ptr = load<std::int64_t>(pointers_ + 8 * i);
      require(len >= 0, "Megatron index " + iname + ": sequence " + std::to_string(i) + " has negative length " +
                            std::to_string(len));
      require(ptr >= 0 && std::uint64_t(ptr) == end,
              "Megatron index " + iname + ": sequence " + std::to_string(i) + " starts at byte " + std::to_string(ptr) +
                  " of the .bin but the sequences before it end at byte " + std::to_string(end));
      end += std::uint64_t(len) * std::uint64_t(width_);
    }
    require(bin_.size() == end, "Megatron data file " + q(bin_.path()) + " is " + std::to_string(bin_.size()) +
                                    " bytes but its index " + iname + " describes " + std::to_string(end / width_) +
                                    " tokens (" + std::to_string(end) + " bytes)");
    num_tokens_ = end / std::uint64_t(width_);
    std::int64_t prev = 0;
    for (std::uint64_t d = 0; d < D_; ++d) {
      const auto s = load<std::int64_t>(doc_idx_ + 8 * d);
      require(d > 0 || s == 0, "Megatron index " + iname + ": document_indices[0] is " + std::to_string(s) +
                                   " (expected 0)");
      require(s >= prev && std::uint64_t(s) <= S_,
              "Megatron index " + iname + ": document_indices[" + std::to_string(d) + "] = " + std::to_string(s) +
                  " is not between the previous index " + std::to_string(prev) + " and the sequence count " +
                  std::to_string(S_));
      prev = s;
    }
    require(std::uint64_t(prev) == S_, "Megatron index " + iname + ": the last document index is " +
                                           std::to_string(prev) + " but there are " + std::to_string(S_) +
                                           " sequences");
  }

  std::uint64_t num_tokens() const override { return num_tokens_; }
  std::uint64_t num_documents() const override { return D_ - 1; }
  std::uint64_t document_start(std::uint64_t d) const override {
    require(d <= num_documents(), "document " + std::to_string(d) + " of " + q(prefix_) + ", which has " +
                                      std::to_string(num_documents()) + " documents");
    if (d == num_documents()) return num_tokens_;
    const auto s = std::uint64_t(load<std::int64_t>(doc_idx_ + 8 * d));
    if (s == S_) return num_tokens_;  // trailing documents without sequences
    return std::uint64_t(load<std::int64_t>(pointers_ + 8 * s)) / std::uint64_t(width_);
  }
  void read(std::uint64_t offset, std::uint64_t n, std::uint32_t* out) const override {
    check_range(prefix_, offset, n, num_tokens_);
    copy_tokens(bin_.data() + width_ * offset, width_, width_ == 4, offset, n, out, bin_.path());
  }
  int token_bytes() const override { return width_; }
  std::string path() const override { return prefix_; }
  std::string format_name() const override { return width_ == 2 ? "megatron uint16" : "megatron int32"; }

  std::uint64_t num_sequences() const { return S_; }
  std::uint64_t num_document_indices() const { return D_; }
  const unsigned char* payload() const { return bin_.data(); }
  std::uint64_t payload_bytes() const { return bin_.size(); }
  const unsigned char* raw_lengths() const { return lengths_; }
  std::int64_t pointer(std::uint64_t i) const { return load<std::int64_t>(pointers_ + 8 * i); }
  std::int64_t document_index(std::uint64_t d) const { return load<std::int64_t>(doc_idx_ + 8 * d); }

 private:
  std::string prefix_;
  MappedFile idx_, bin_;
  int width_ = 2;
  std::uint64_t S_ = 0, D_ = 0, num_tokens_ = 0;
  const unsigned char* lengths_ = nullptr;   // int32[S]
  const unsigned char* pointers_ = nullptr;  // int64[S]
  const unsigned char* doc_idx_ = nullptr;   // int64[D]
};

// ---------------------------------------------------------------------------------------------
// Writing

/// \brief A file written through a large buffer with checked POSIX writes. Every failure throws
/// "writing 'path' failed: <strerror>".
class OutFile {
 public:
  explicit OutFile(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    require(fd_ >= 0, "cannot create " + q(path_) + ": " + errno_text());
    buf_.resize(kWriteBuffer);
  }
  ~OutFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  OutFile(const OutFile&) = delete;
  OutFile& operator=(const OutFile&) = delete;

  void write(const void* data, std::size_t n) {
    if (used_ + n <= buf_.size()) {
      std::memcpy(buf_.data() + used_, data, n);
      used_ += n;
      return;
    }
    flush();
    if (n >= buf_.size()) {
      write_fully(data, n);
    } else {
      std::memcpy(buf_.data(), data, n);
      used_ = n;
    }
  }
  template <class T>
  void put(T v) { write(&v, sizeof(T)); }

  void flush() {
    if (used_ > 0) write_fully(buf_.data(), used_);
    used_ = 0;
  }
  /// Overwrites bytes at `offset` (after a flush), e.g. a header whose count is known at the end.
  void write_at(std::uint64_t offset, const void* data, std::size_t n) {
    flush();
    const auto* p = static_cast<const char*>(data);
    while (n > 0) {
      errno = 0;
      const ssize_t w = ::pwrite(fd(), p, n, off_t(offset));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) fail();
      p += w, n -= std::size_t(w), offset += std::uint64_t(w);
    }
  }
  /// Flushes, fsyncs and closes: after this the bytes are on disk.
  void sync_and_close() {
    flush();
    if (::fsync(fd()) != 0) fail();
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail();
  }
  /// Closes without checks and removes the file; never throws.
  void discard() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    ::unlink(path_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  int fd() {
    if (fd_ < 0) throw Error("writing " + q(path_) + " failed: the file was already closed");
    return fd_;
  }
  [[noreturn]] void fail() {
    const std::string why = errno == 0 ? std::string("no bytes written (disk full?)") : errno_text();
    throw Error("writing " + q(path_) + " failed: " + why);
  }
  void write_fully(const void* data, std::size_t n) {
    const auto* p = static_cast<const char*>(data);
    while (n > 0) {
      errno = 0;
      const ssize_t w = ::write(fd(), p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) fail();
      p += w, n -= std::size_t(w);
    }
  }

  std::string path_;
  int fd_ = -1;
  std::vector<char> buf_;
  std::size_t used_ = 0;
};


/// \brief Output files written as `final.tmp` and renamed over `final` at commit(), in the order
/// they were added; the temporaries are removed on abort() or destruction before commit().
class StagedOutput {
 public:
  StagedOutput() = default;
  StagedOutput(const StagedOutput&) = delete;
  StagedOutput& operator=(const StagedOutput&) = delete;
  ~StagedOutput() { abort(); }

  OutFile& add(const std::string& final_path) {
    files_.push_back({final_path, std::make_unique<OutFile>(final_path + ".tmp")});
    return *files_.back().file;
  }
  void commit() {
    try {
      for (auto& f : files_) f.file->sync_and_close();
      for (auto& f : files_) {
        if (std::rename(f.file->path().c_str(), f.final_path.c_str()) != 0)
          throw Error("cannot rename " + q(f.file->path()) + " to " + q(f.final_path) + ": " + errno_text());
        f.renamed = true;
      }
    } catch (...) {
      abort();
      throw;
    }
    if (!files_.empty()) sync_parent_dir(files_.front().final_path);  // best effort: the files are synced
    files_.clear();
  }
  void abort() noexcept {
    for (auto& f : files_)
      if (!f.renamed) f.file->discard();
    files_.clear();
  }

 private:
  struct Staged {
    std::string final_path;
    std::unique_ptr<OutFile> file;
    bool renamed = false;
  };
  std::vector<Staged> files_;
};

void write_llmc_header(OutFile& f, int width, std::uint64_t count) {
  std::int32_t header[256] = {};
  header[0] = width == 2 ? kLlmcMagic16 : kLlmcMagic32;
  header[1] = width == 2 ? kLlmcVersion16 : kLlmcVersion32;
  header[2] = std::int32_t(count);
  f.write_at(0, header, sizeof(header));
}

void write_megatron_header(OutFile& f, int width, std::uint64_t S, std::uint64_t D) {
  f.write(kMegatronMagic, sizeof(kMegatronMagic));
  f.put<std::uint64_t>(1);
  f.put<std::uint8_t>(width == 2 ? kDtypeUint16 : kDtypeInt32);
  f.put<std::uint64_t>(S);
  f.put<std::uint64_t>(D);
}

std::string too_many_llmc_tokens(const std::string& path, std::uint64_t n) {
  return "cannot write " + std::to_string(n) + " tokens to the llm.c token file " + q(path) +
         ": its header counts tokens in an int32 (at most 2147483647); use the Megatron format for more";
}

}  // namespace

std::unique_ptr<TokenDataset> TokenDataset::open(const std::string& path) {
  if (ends_with(path, ".idx")) return std::make_unique<MegatronDataset>(path.substr(0, path.size() - 4));
  if (ends_with(path, ".bin") && file_exists(path.substr(0, path.size() - 4) + ".idx"))
    return std::make_unique<MegatronDataset>(path.substr(0, path.size() - 4));
  if (file_exists(path + ".idx")) return std::make_unique<MegatronDataset>(path);
  if (!file_exists(path) && file_exists(path + ".bin"))
    throw Error("cannot open Megatron dataset " + q(path) + ": " + q(path + ".bin") + " has no index " +
                q(path + ".idx"));
  require(file_exists(path), "cannot open token dataset " + q(path) + ": no such file, and no " + q(path + ".idx"));
  return std::make_unique<LlmcDataset>(path);
}

struct TokenDatasetWriter::Impl {
  std::string path;
  TokenFormat format;
  std::uint64_t vocab_size;
  int width;
  StagedOutput out;
  OutFile* data = nullptr;            // the llm.c file or prefix.bin
  std::vector<std::int32_t> lengths;  // Megatron: one sequence per document
  std::vector<std::uint16_t> narrow;  // conversion buffer for uint16 tokens
  std::uint64_t tokens = 0, documents = 0;
  bool finished = false, failed = false;

  void usable() const {
    require(!finished, "the writer of " + q(path) + " has already finished");
    require(!failed, "the writer of " + q(path) + " stopped after an earlier write error");
  }
};

TokenDatasetWriter::TokenDatasetWriter(const std::string& path, TokenFormat format, std::uint64_t vocab_size)
    : impl_(std::make_unique<Impl>()) {
  Impl& w = *impl_;
  w.path = path;
  w.format = format;
  w.vocab_size = vocab_size;
  w.width = width_for_vocab(vocab_size);
  require(vocab_size >= 1, "cannot write " + q(path) + ": vocab_size must be at least 1");
  if (format == TokenFormat::llmc) {
    require(vocab_size <= (std::uint64_t(1) << 32), "cannot write " + q(path) + ": vocab_size " +
                                                        std::to_string(vocab_size) + " does not fit uint32 token ids");
    w.data = &w.out.add(path);
    const char zeros[kLlmcHeaderBytes] = {};
    w.data->write(zeros, sizeof(zeros));  // placeholder; the real header is written at finish()
  } else {
    require(vocab_size <= (std::uint64_t(1) << 31), "cannot write " + q(path) + ": vocab_size " +
                                                        std::to_string(vocab_size) +
                                                        " does not fit Megatron's int32 token ids");
    w.data = &w.out.add(path + ".bin");
  }
}

TokenDatasetWriter::~TokenDatasetWriter() = default;  // StagedOutput removes unfinished temporaries

void TokenDatasetWriter::add_document(const std::uint32_t* ids, std::uint64_t n) {
  Impl& w = *impl_;
  w.usable();
  // Everything is checked before a byte is written, so a rejected document leaves the writer usable.
  for (std::uint64_t i = 0; i < n; ++i)
    if (ids[i] >= w.vocab_size)
      throw Error("cannot write " + q(w.path) + ": token id " + std::to_string(ids[i]) + " at position " +
                  std::to_string(i) + " of document " + std::to_string(w.documents) + " is >= vocab_size " +
                  std::to_string(w.vocab_size));
  if (w.format == TokenFormat::llmc) {
    require(n <= kLlmcMaxTokens - w.tokens, too_many_llmc_tokens(w.path, w.tokens + n));
  } else {
    require(n <= 0x7fffffffu, "cannot write " + q(w.path) + ": document " + std::to_string(w.documents) + " has " +
                                  std::to_string(n) + " tokens, more than a Megatron sequence length (int32) holds");
  }
  try {
    if (w.width == 4) {
      w.data->write(ids, 4 * n);
    } else {
      constexpr std::uint64_t kChunk = 1 << 16;
      w.narrow.resize(std::size_t(std::min(n, kChunk)));
      for (std::uint64_t b = 0; b < n; b += kChunk) {
        const std::uint64_t m = std::min(kChunk, n - b);
        for (std::uint64_t i = 0; i < m; ++i) w.narrow[i] = std::uint16_t(ids[b + i]);
        w.data->write(w.narrow.data(), 2 * m);
      }
    }
    if (w.format == TokenFormat::megatron) w.lengths.push_back(std::int32_t(n));
  } catch (...) {
    w.failed = true;
    w.out.abort();
    throw;
  }
  w.tokens += n;
  w.documents += 1;
}

void TokenDatasetWriter::finish() {
  Impl& w = *impl_;
  w.usable();
  try {
    if (w.format == TokenFormat::llmc) {
      write_llmc_header(*w.data, w.width, w.tokens);
    } else {
      OutFile& idx = w.out.add(w.path + ".idx");
      const std::uint64_t S = w.lengths.size();
      write_megatron_header(idx, w.width, S, S + 1);
      idx.write(w.lengths.data(), 4 * S);
      std::int64_t ptr = 0;
      for (const std::int32_t len : w.lengths) {
        idx.put<std::int64_t>(ptr);
        ptr += std::int64_t(len) * w.width;
      }
      for (std::uint64_t d = 0; d <= S; ++d) idx.put<std::int64_t>(std::int64_t(d));
    }
    w.out.commit();  // renames prefix.bin before prefix.idx
  } catch (...) {
    w.failed = true;
    w.out.abort();
    throw;
  }
  w.finished = true;
}

std::uint64_t TokenDatasetWriter::num_tokens() const { return impl_->tokens; }
std::uint64_t TokenDatasetWriter::num_documents() const { return impl_->documents; }

namespace {

/// Streams `bytes` of tokens from a mapped payload to `out` in 8 MiB chunks, checking each id.
void copy_payload(const unsigned char* src, std::uint64_t bytes, int width, std::uint64_t vocab_size,
                  const std::string& name, OutFile& out) {
  const bool check = !(width == 2 && vocab_size >= 65536);
  for (std::uint64_t b = 0; b < bytes; b += kCopyChunk) {
    const std::uint64_t m = std::min<std::uint64_t>(kCopyChunk, bytes - b);
    if (check) {
      for (std::uint64_t i = 0; i < m; i += std::uint64_t(width)) {
        const std::uint64_t id = width == 2 ? load<std::uint16_t>(src + b + i) : load<std::uint32_t>(src + b + i);
        if (id >= vocab_size)
          throw Error(q(name) + " holds token id " + std::to_string(id) + " (as uint" + std::to_string(8 * width) +
                      ") at token " + std::to_string((b + i) / std::uint64_t(width)) + ", not below vocab_size " +
                      std::to_string(vocab_size));
      }
    }
    out.write(src + b, std::size_t(m));
  }
}

}  // namespace

void concat_token_datasets(const std::vector<std::string>& parts, const std::string& out, TokenFormat format,
                           std::uint64_t vocab_size) {
  require(!parts.empty(), "cannot concatenate into " + q(out) + ": no parts given");
  require(vocab_size >= 1, "cannot concatenate into " + q(out) + ": vocab_size must be at least 1");
  require(vocab_size <= (std::uint64_t(1) << (format == TokenFormat::megatron ? 31 : 32)),
          "cannot concatenate into " + q(out) + ": vocab_size " + std::to_string(vocab_size) + " is too large for " +
              (format == TokenFormat::megatron ? "Megatron's int32" : "llm.c's uint32") + " token ids");
  std::vector<std::unique_ptr<TokenDataset>> ds;
  for (const auto& p : parts) {
    ds.push_back(TokenDataset::open(p));
    const bool megatron = dynamic_cast<const MegatronDataset*>(ds.back().get()) != nullptr;
    require(megatron == (format == TokenFormat::megatron),
            "cannot concatenate " + q(p) + " (" + ds.back()->format_name() + ") into a " +
                (format == TokenFormat::megatron ? "Megatron" : "llm.c") + " dataset");
    require(ds.back()->token_bytes() == ds.front()->token_bytes(),
            "cannot concatenate " + q(parts.front()) + " (" + std::to_string(ds.front()->token_bytes()) +
                "-byte tokens) and " + q(p) + " (" + std::to_string(ds.back()->token_bytes()) + "-byte tokens)");
  }
  const int width = ds.front()->token_bytes();
  require(width == width_for_vocab(vocab_size),
          "cannot concatenate into " + q(out) + ": the parts have " + std::to_string(width) + "-byte tokens but vocab_size " +
              std::to_string(vocab_size) + " calls for " + std::to_string(width_for_vocab(vocab_size)) + "-byte tokens");

  StagedOutput staged;
  if (format == TokenFormat::llmc) {
    std::uint64_t total = 0;
    for (const auto& d : ds) total += d->num_tokens();
    require(total <= kLlmcMaxTokens, too_many_llmc_tokens(out, total));
    OutFile& f = staged.add(out);
    const char zeros[kLlmcHeaderBytes] = {};
    f.write(zeros, sizeof(zeros));
    for (const auto& d : ds) {
      const auto& part = static_cast<const LlmcDataset&>(*d);
      copy_payload(part.payload(), part.num_tokens() * std::uint64_t(width), width, vocab_size, part.path(), f);
    }
    write_llmc_header(f, width, total);
    staged.commit();
    return;
  }

  std::vector<const MegatronDataset*> m;
  std::uint64_t S = 0, D = 1;
  for (const auto& d : ds) {
    m.push_back(static_cast<const MegatronDataset*>(d.get()));
    S += m.back()->num_sequences();
    D += m.back()->num_document_indices() - 1;
  }
  OutFile& bin = staged.add(out + ".bin");
  for (const auto* p : m) copy_payload(p->payload(), p->payload_bytes(), width, vocab_size, p->path() + ".bin", bin);
  OutFile& idx = staged.add(out + ".idx");
  write_megatron_header(idx, width, S, D);
  for (const auto* p : m) idx.write(p->raw_lengths(), std::size_t(4 * p->num_sequences()));
  std::int64_t byte_offset = 0;
  for (const auto* p : m) {
    for (std::uint64_t i = 0; i < p->num_sequences(); ++i) idx.put<std::int64_t>(p->pointer(i) + byte_offset);
    byte_offset += std::int64_t(p->payload_bytes());
  }
  idx.put<std::int64_t>(0);
  std::int64_t seq_offset = 0;
  for (const auto* p : m) {
    for (std::uint64_t d = 1; d < p->num_document_indices(); ++d) idx.put<std::int64_t>(p->document_index(d) + seq_offset);
    seq_offset += std::int64_t(p->num_sequences());
  }
  staged.commit();  // renames out.bin before out.idx
}

}  // namespace tapestry::io
