#pragma once
/// \file
/// \brief Token datasets on disk, memory-mapped and read lazily: llm.c token files (uint16, magic
/// 20240520 version 1; uint32, magic 20240801 version 7) and Megatron indexed datasets
/// (`prefix.bin` + `prefix.idx`, header "MMIDIDX\0\0", uint16 or int32 ids).
///
/// Sizes and offsets are 64-bit; nothing reads a whole file: read() touches only the pages of the
/// tokens it returns.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tapestry::io {

enum class TokenFormat { llmc, megatron };

/// \brief A read-only token dataset: a sequence of token ids split into documents.
class TokenDataset {
 public:
  virtual ~TokenDataset() = default;
  /// Opens `path`: an llm.c token file, or a Megatron dataset named by its prefix, by `prefix.bin`
  /// or by `prefix.idx`. Throws tapestry::Error naming the file and the problem (missing, truncated,
  /// bad magic/version/dtype, index inconsistent with the data file).
  static std::unique_ptr<TokenDataset> open(const std::string& path);

  virtual std::uint64_t num_tokens() const = 0;
  /// llm.c files have no document index: one document.
  virtual std::uint64_t num_documents() const = 0;
  /// Token offset where document d starts; d == num_documents() gives num_tokens().
  virtual std::uint64_t document_start(std::uint64_t d) const = 0;
  /// Copies tokens [offset, offset + n) to out. Throws if the range is outside the data.
  virtual void read(std::uint64_t offset, std::uint64_t n, std::uint32_t* out) const = 0;
  /// 2 (uint16) or 4 (uint32 / int32).
  virtual int token_bytes() const = 0;
  virtual std::string path() const = 0;
  /// "llm.c uint16", "llm.c uint32", "megatron uint16", "megatron int32".
  virtual std::string format_name() const = 0;
};

/// \brief Writes a dataset document by document, streaming (nothing held but a buffer). The files
/// appear only at finish(), written to temporaries and renamed, so a failure never leaves a
/// half-written dataset in place of a good one. Token width: uint16 when vocab_size <= 65536,
/// else 32-bit (llm.c: uint32 format; Megatron: int32, as Megatron does above 65500 ids).
class TokenDatasetWriter {
 public:
  /// `path`: the llm.c file name, or the Megatron prefix (writes prefix.bin and prefix.idx).
  TokenDatasetWriter(const std::string& path, TokenFormat format, std::uint64_t vocab_size);
  ~TokenDatasetWriter();  ///< removes temporaries if finish() was not reached
  TokenDatasetWriter(const TokenDatasetWriter&) = delete;
  TokenDatasetWriter& operator=(const TokenDatasetWriter&) = delete;
  /// Throws if an id is >= vocab_size.
  void add_document(const std::uint32_t* ids, std::uint64_t n);
  void finish();
  std::uint64_t num_tokens() const;
  std::uint64_t num_documents() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Concatenates datasets of one format and token width into `out` (streaming copy; document
/// boundaries kept), written atomically like TokenDatasetWriter. Used to merge the parts that the
/// ranks of `data prepare` wrote.
void concat_token_datasets(const std::vector<std::string>& parts, const std::string& out,
                           TokenFormat format, std::uint64_t vocab_size);

}  // namespace tapestry::io
