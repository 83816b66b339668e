#include "tapestry/io/tokenizer.hpp"

#include <filesystem>
#include <fstream>
#include <iterator>

#include "tapestry/core/error.hpp"
#include "tapestry/io/token_file.hpp"

namespace tapestry::io {

std::vector<std::uint16_t> ByteTokenizer::encode(const std::string& text) const {
  std::vector<std::uint16_t> out(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) out[i] = static_cast<unsigned char>(text[i]);
  return out;
}

std::string ByteTokenizer::decode(const std::vector<std::uint16_t>& tokens) const {
  std::string s(tokens.size(), '\0');
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    require(tokens[i] < kVocabSize, "byte tokenizer cannot decode token " + std::to_string(tokens[i]));
    s[i] = static_cast<char>(tokens[i]);
  }
  return s;
}

PrepareResult prepare_data(const PrepareConfig& cfg) {
  require(!cfg.inputs.empty(), "data prepare: no input text files given");
  require(cfg.val_fraction >= 0 && cfg.val_fraction < 1,
          "data prepare: val_fraction must be in [0, 1)");
  std::string text;
  for (const auto& path : cfg.inputs) {
    std::ifstream f(path, std::ios::binary);
    require(bool(f), "data prepare: cannot open input '" + path + "'");
    text.append(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  require(!text.empty(), "data prepare: the inputs are empty");
  const auto tokens = ByteTokenizer{}.encode(text);
  const std::size_t n_val = std::size_t(double(tokens.size()) * cfg.val_fraction);
  const std::size_t n_train = tokens.size() - n_val;
  require(cfg.val_fraction == 0 || n_val > 0, "data prepare: corpus too small for a validation split");

  std::error_code ec;
  std::filesystem::create_directories(cfg.output_dir, ec);
  require(!ec, "data prepare: cannot create '" + cfg.output_dir + "': " + ec.message());
  PrepareResult r;
  r.train_path = (std::filesystem::path(cfg.output_dir) / (cfg.name + "_train.bin")).string();
  r.val_path = (std::filesystem::path(cfg.output_dir) / (cfg.name + "_val.bin")).string();
  write_token_file(r.train_path, std::vector<std::uint16_t>(tokens.begin(), tokens.begin() + std::ptrdiff_t(n_train)));
  r.train_tokens = n_train;
  if (n_val > 0) {
    write_token_file(r.val_path, std::vector<std::uint16_t>(tokens.begin() + std::ptrdiff_t(n_train), tokens.end()));
    r.val_tokens = n_val;
  } else {
    r.val_path.clear();
  }
  return r;
}

}  // namespace tapestry::io
