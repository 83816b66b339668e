// The byte tokenizer, load_tokenizer's dispatch by file, and SentencePiece training.
#include "tapestry/io/tokenizer.hpp"

#include <sentencepiece_trainer.h>

#include <filesystem>
#include <sstream>
#include <unordered_map>

#include "tapestry/core/error.hpp"

namespace tapestry::io {
namespace {

class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<std::uint32_t> encode(std::string_view text) const override {
    std::vector<std::uint32_t> out(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) out[i] = static_cast<unsigned char>(text[i]);
    return out;
  }
  std::string decode(const std::vector<std::uint32_t>& ids) const override {
    std::string s(ids.size(), '\0');
    for (std::size_t i = 0; i < ids.size(); ++i) {
      require(ids[i] < 256, "byte tokenizer cannot decode token id " + std::to_string(ids[i]));
      s[i] = static_cast<char>(ids[i]);
    }
    return s;
  }
  std::uint32_t vocab_size() const override { return 256; }
  std::int64_t bos_id() const override { return -1; }
  std::int64_t eos_id() const override { return -1; }
  std::string describe() const override { return "byte tokenizer (256 ids, bos none, eos none)"; }
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::unique_ptr<Tokenizer> make_byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  namespace fs = std::filesystem;
  if (spec == "byte") return make_byte_tokenizer();
  if (ends_with(spec, ".json")) return load_bpe_tokenizer(spec);
  std::error_code ec;
  if (fs::is_directory(spec, ec)) {
    const fs::path json = fs::path(spec) / "tokenizer.json";
    require(fs::is_regular_file(json, ec), "tokenizer folder '" + spec + "' holds no tokenizer.json");
    return load_bpe_tokenizer(json.string());
  }
  if (ends_with(spec, ".model")) return load_sentencepiece_tokenizer(spec);
  throw Error("unknown tokenizer '" + spec +
              "' (expected 'byte', a tokenizer.json, a folder holding one, or a SentencePiece .model)");
}

void train_tokenizer(const TokenizerTrainConfig& cfg) {
  require(!cfg.inputs.empty(), "train-tokenizer: no input text files given");
  require(cfg.model_type == "unigram" || cfg.model_type == "bpe",
          "train-tokenizer: model type '" + cfg.model_type + "' is not unigram or bpe");
  std::string inputs;
  for (const auto& in : cfg.inputs) {
    require(std::filesystem::is_regular_file(in), "train-tokenizer: cannot open input '" + in + "'");
    inputs += (inputs.empty() ? "" : ",") + in;
  }
  std::ostringstream cov;
  cov.precision(17);
  cov << cfg.character_coverage;
  std::unordered_map<std::string, std::string> args = {
      {"input", inputs},
      {"model_prefix", cfg.output_prefix},
      {"model_type", cfg.model_type},
      {"vocab_size", std::to_string(cfg.vocab_size)},
      {"character_coverage", cov.str()},
      {"byte_fallback", cfg.byte_fallback ? "true" : "false"},
      // Lossless, as for Llama 2: no NFKC, whitespace kept as written (code, indentation).
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"num_threads", "1"},
      {"minloglevel", "2"},  // warnings and errors only; failures come back in the status
  };
  if (cfg.max_sentences > 0) {
    args["input_sentence_size"] = std::to_string(cfg.max_sentences);
    args["shuffle_input_sentence"] = "true";
  }
  const auto st = sentencepiece::SentencePieceTrainer::Train(args);
  if (!st.ok()) throw Error("train-tokenizer: " + std::string(st.message()));
}

}  // namespace tapestry::io
