#pragma once
/// \file
/// \brief Byte-level tokenizer (vocabulary 256) and `data prepare`: text files -> token files.

#include <cstdint>
#include <string>
#include <vector>

namespace tapestry::io {

/// \brief Every byte is a token; decoding is exact for any input.
struct ByteTokenizer {
  static constexpr int kVocabSize = 256;
  std::vector<std::uint16_t> encode(const std::string& text) const;
  std::string decode(const std::vector<std::uint16_t>& tokens) const;
};

/// \brief What `tapestry data prepare` does.
struct PrepareConfig {
  std::vector<std::string> inputs;  ///< text files, concatenated in order
  std::string output_dir = "data";
  std::string name = "corpus";     ///< writes <name>_train.bin and <name>_val.bin
  double val_fraction = 0.1;       ///< tail of the corpus held out for validation
};

struct PrepareResult {
  std::string train_path, val_path;
  std::size_t train_tokens = 0, val_tokens = 0;
};

/// Throws tapestry::Error on an unreadable input or a split that leaves a side empty.
PrepareResult prepare_data(const PrepareConfig& cfg);

}  // namespace tapestry::io
