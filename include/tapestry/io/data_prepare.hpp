#pragma once
/// \file
/// \brief `tapestry data prepare`: text (plain, or JSON lines) -> token datasets, in parts that
/// ranks and threads tokenize at once and that are then joined in order.

#include <cstdint>
#include <string>
#include <vector>

namespace tapestry::io {

/// \brief What `tapestry data prepare` does.
struct PrepareConfig {
  std::vector<std::string> inputs;  ///< text or .jsonl files, in order; each file starts a document
  std::string output_dir = "data";
  std::string name = "corpus";      ///< writes <name>_train and <name>_val datasets
  double val_fraction = 0.1;        ///< tail of the corpus (by bytes) held out for validation
  std::string tokenizer = "byte";   ///< "byte", a tokenizer.json (or its folder), a SentencePiece .model
  std::string format = "llmc";      ///< llmc (<name>_train.bin) or megatron (<name>_train.bin + .idx)
  /// Plain text: the string between documents ("" : each file is one document). Escapes \n, \t
  /// and \\ are understood, so "\n\n" splits at blank lines.
  std::string doc_separator;
  std::string text_key = "text";    ///< the field of each JSON line that holds the document
  bool add_bos = true, add_eos = true;  ///< where the tokenizer defines BOS / EOS
  int threads = 1;                  ///< tokenizing threads per rank
};

struct PrepareResult {
  std::string train_path, val_path;  ///< val_path empty when val_fraction is 0
  std::uint64_t train_tokens = 0, val_tokens = 0;  ///< of the outputs (prepare_join, prepare_data)
  std::uint64_t tokens = 0, documents = 0, empty_documents = 0, bytes = 0;  ///< tokenized (both splits)
  std::uint32_t vocab_size = 0;      ///< the tokenizer's
  double seconds = 0;                ///< tokenizing and writing this part (prepare_part) or all (prepare_data)
  double load_seconds = 0;           ///< mapping the inputs and loading the tokenizer, before that
  std::string tokenizer;             ///< the tokenizer's describe() line
  std::int64_t bos = -1, eos = -1;   ///< ids added per document (-1: none)
};

/// Tokenizes part `part` of `parts` (each part the documents that start in its share of the
/// input bytes; the validation split is the documents at or after the first document start in
/// the last val_fraction of the bytes, or, where a file is one document, that byte itself) with
/// cfg.threads threads, and writes its part datasets. Throws tapestry::Error naming the problem.
PrepareResult prepare_part(const PrepareConfig& cfg, int part, int parts, bool progress);

/// After all parts are written: joins them, in order, into the outputs and removes them. `part`
/// is this process's prepare_part() result (the tokenizer's description, ids and vocabulary; the
/// tokenizer is not loaded again). The result's train/val counts are those of the outputs.
PrepareResult prepare_join(const PrepareConfig& cfg, int parts, const PrepareResult& part);

/// Both, in one process.
PrepareResult prepare_data(const PrepareConfig& cfg);

/// "\n" -> newline, "\t" -> tab, "\\" -> backslash.
std::string unescape(const std::string& s);

}  // namespace tapestry::io
