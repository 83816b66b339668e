#include "tapestry/io/data_loader.hpp"

#include "tapestry/core/error.hpp"
#include "tapestry/io/token_file.hpp"

namespace tapestry::io {

DataLoader::DataLoader(const std::vector<std::string>& files, int B, int T, int vocab_size, int shard,
                       int num_shards, int micro_batches)
    : names_(files), B_(B), T_(T), shard_(shard), num_shards_(num_shards), micro_batches_(micro_batches) {
  require(!files.empty(), "no token files given");
  require(num_shards >= 1 && shard >= 0 && shard < num_shards && micro_batches >= 1,
          "data loader shard or micro-batch count out of range");
  const std::int64_t need = std::int64_t(B) * T * num_shards * micro_batches + 1;
  for (const auto& path : files) {
    auto tokens = read_token_file(path);
    require(std::int64_t(tokens.size()) >= need,
            "token file '" + path + "' holds " + std::to_string(tokens.size()) +
                " tokens, fewer than one global batch: batch_size*seq_len*dp*grad_accum+1 = " + std::to_string(need));
    for (std::size_t i = 0; i < tokens.size(); ++i)
      require(tokens[i] < vocab_size, "token file '" + path + "': token id " +
                                          std::to_string(tokens[i]) + " at position " +
                                          std::to_string(i) + " is >= vocab_size " +
                                          std::to_string(vocab_size));
    shards_.push_back(std::move(tokens));
  }
}

std::int64_t DataLoader::num_tokens() const {
  std::int64_t n = 0;
  for (const auto& s : shards_) n += std::int64_t(s.size());
  return n;
}

void DataLoader::set_position(const Position& p) {
  require(p.file >= 0 && p.file < std::int64_t(shards_.size()) && p.offset >= 0 &&
              p.offset + std::int64_t(B_) * T_ * num_shards_ * micro_batches_ + 1 <=
                  std::int64_t(shards_[std::size_t(p.file)].size()),
          "data loader position (file " + std::to_string(p.file) + ", offset " +
              std::to_string(p.offset) + ") does not fit the data");
  pos_ = p;
  micro_ = 0;
}

void DataLoader::next_batch(std::vector<int>& inputs, std::vector<int>& targets) {
  const std::size_t n = std::size_t(B_) * std::size_t(T_);
  inputs.resize(n);
  targets.resize(n);
  const std::int64_t stride = std::int64_t(n) * num_shards_ * micro_batches_;  // one global batch
  const auto& file = shards_[std::size_t(pos_.file)];
  const std::uint16_t* p = file.data() + pos_.offset + std::int64_t(n) * (std::int64_t(micro_) * num_shards_ + shard_);
  for (std::size_t i = 0; i < n; ++i) {
    inputs[i] = p[i];
    targets[i] = p[i + 1];
  }
  if (++micro_ < micro_batches_) return;
  micro_ = 0;
  pos_.offset += stride;
  if (pos_.offset + stride + 1 > std::int64_t(file.size())) {
    pos_.offset = 0;
    pos_.file += 1;
    if (pos_.file == std::int64_t(shards_.size())) {
      pos_.file = 0;
      pos_.epoch += 1;
    }
  }
}

}  // namespace tapestry::io
