#pragma once
/// \file
/// \brief Deterministic sequential loader of (B, T) batches from token files, with a saveable position.

#include <cstdint>
#include <string>
#include <vector>

namespace tapestry::io {

/// \brief Walks the files in order, wrapping to the first file at the end. Each call reads the
/// `shard`-th of `num_shards` consecutive (B, T) blocks (targets shifted by one) and advances past
/// all of them, so data-parallel ranks together read exactly what one rank with num_shards * B rows
/// would. The whole position is (file, offset, epoch), so a run can resume exactly.
class DataLoader {
 public:
  struct Position {
    std::int64_t file = 0;
    std::int64_t offset = 0;
    std::int64_t epoch = 0;
    bool operator==(const Position& o) const {
      return file == o.file && offset == o.offset && epoch == o.epoch;
    }
  };

  /// Loads every file; throws tapestry::Error if one is bad, has a token >= vocab_size, or holds
  /// fewer than B*T+1 tokens.
  DataLoader(const std::vector<std::string>& files, int B, int T, int vocab_size, int shard = 0,
             int num_shards = 1);

  /// Fills inputs and targets, each B*T tokens (row-major (B, T)), and advances.
  void next_batch(std::vector<int>& inputs, std::vector<int>& targets);

  Position position() const { return pos_; }
  void set_position(const Position& p);
  void reset() { pos_ = Position{}; }
  std::int64_t num_tokens() const;
  int batch_size() const { return B_; }
  int seq_len() const { return T_; }

 private:
  std::vector<std::vector<std::uint16_t>> shards_;
  std::vector<std::string> names_;
  int B_, T_, shard_, num_shards_;
  Position pos_;
};

}  // namespace tapestry::io
