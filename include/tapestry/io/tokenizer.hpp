#pragma once
/// \file
/// \brief Tokenizers behind one interface, chosen by file: the byte tokenizer, Hugging Face
/// `tokenizer.json` byte-level BPE (GPT-2, Llama 3, Mistral-Nemo / Apertus style) and SentencePiece
/// `.model` files; and `data prepare` / `data train-tokenizer`.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tapestry::io {

/// \brief Text <-> token ids. encode() adds no BOS/EOS; data prepare adds them per document.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  /// Ids of `text`. Special (added) tokens written in the text, e.g. "<|endoftext|>", are kept
  /// whole where the tokenizer file says so (tokenizer.json's added_tokens).
  virtual std::vector<std::uint32_t> encode(std::string_view text) const = 0;
  virtual std::string decode(const std::vector<std::uint32_t>& ids) const = 0;
  /// One more than the largest id the tokenizer can produce.
  virtual std::uint32_t vocab_size() const = 0;
  /// -1 when the tokenizer defines none.
  virtual std::int64_t bos_id() const = 0;
  virtual std::int64_t eos_id() const = 0;
  /// One line for logs, e.g. "byte-level BPE 'tokenizer.json' (50257 ids, bos none, eos 50256)".
  virtual std::string describe() const = 0;
};

/// Every byte is a token (vocabulary 256, no BOS/EOS); decoding is exact for any input.
std::unique_ptr<Tokenizer> make_byte_tokenizer();
/// A Hugging Face tokenizer.json with a BPE model and byte-level pre-tokenization. Throws
/// tapestry::Error naming the file and the problem (unreadable, not JSON, unsupported model or
/// pre-tokenizer, a merge naming a token not in the vocabulary, a regex PCRE2 rejects).
std::unique_ptr<Tokenizer> load_bpe_tokenizer(const std::string& tokenizer_json);
/// A SentencePiece model file (unigram or BPE), through libsentencepiece.
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& model_file);
/// "byte"; a file ending .json, or a folder holding tokenizer.json (a Hugging Face model folder);
/// a file ending .model (SentencePiece).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

/// \brief What `tapestry data train-tokenizer` does: a SentencePiece model from text files.
struct TokenizerTrainConfig {
  std::vector<std::string> inputs;
  std::string output_prefix = "tokenizer";  ///< writes <prefix>.model and <prefix>.vocab
  std::uint32_t vocab_size = 8000;
  std::string model_type = "unigram";       ///< unigram | bpe
  double character_coverage = 0.9995;
  bool byte_fallback = true;                ///< unknown characters become bytes, never <unk>
  std::uint64_t max_sentences = 0;          ///< 0: all lines
};
/// Throws tapestry::Error with SentencePiece's message on failure.
void train_tokenizer(const TokenizerTrainConfig& cfg);

}  // namespace tapestry::io
