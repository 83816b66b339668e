// SentencePiece .model files (unigram or BPE) through libsentencepiece.
#include <sentencepiece_processor.h>

#include "tapestry/core/error.hpp"
#include "tapestry/io/tokenizer.hpp"

namespace tapestry::io {
namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) : path_(path) {
    const auto st = sp_.Load(path);
    require(st.ok(), "tokenizer '" + path + "': cannot load the SentencePiece model: " + st.ToString());
  }

  std::vector<std::uint32_t> encode(std::string_view text) const override {
    std::vector<int> ids;
    const auto st = sp_.Encode(text, &ids);
    require(st.ok(), "tokenizer '" + path_ + "': encode failed: " + st.ToString());
    return std::vector<std::uint32_t>(ids.begin(), ids.end());
  }

  std::string decode(const std::vector<std::uint32_t>& ids) const override {
    std::vector<int> v;
    v.reserve(ids.size());
    for (const std::uint32_t id : ids) {
      require(id < vocab_size(), "tokenizer '" + path_ + "' cannot decode token id " + std::to_string(id));
      v.push_back(int(id));
    }
    std::string s;
    const auto st = sp_.Decode(v, &s);
    require(st.ok(), "tokenizer '" + path_ + "': decode failed: " + st.ToString());
    return s;
  }

  std::uint32_t vocab_size() const override { return std::uint32_t(sp_.GetPieceSize()); }
  std::int64_t bos_id() const override { return sp_.bos_id(); }  // -1 when disabled
  std::int64_t eos_id() const override { return sp_.eos_id(); }
  std::string describe() const override {
    auto id = [](std::int64_t v) { return v < 0 ? std::string("none") : std::to_string(v); };
    return "SentencePiece '" + path_ + "' (" + std::to_string(vocab_size()) + " ids, bos " + id(bos_id()) +
           ", eos " + id(eos_id()) + ")";
  }

 private:
  std::string path_;
  sentencepiece::SentencePieceProcessor sp_;  // Encode/Decode are const and thread-safe
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& model_file) {
  return std::make_unique<SentencePieceTokenizer>(model_file);
}

}  // namespace tapestry::io
