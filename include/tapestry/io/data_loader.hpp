#pragma once
/// \file
/// \brief Deterministic sequential loader of (B, T) batches from token files, with a saveable position.

#include <cstdint>
#include <string>
#include <vector>

namespace tapestry::io {

/// \brief Walks the files in order, one optimizer step (a global batch) at a time, wrapping to the
/// next file (and after the last, to the first) when the next global batch does not fit.
///
/// A global batch is `micro_batches` x `num_shards` consecutive (B, T) blocks (targets shifted by
/// one). Call m (0-based, cycling) of a step reads block m * num_shards + shard. So data-parallel
/// ranks with gradient accumulation together read exactly the rows one rank reads with any other
/// split of the same global batch, and they wrap at the same step. The position (file, offset,
/// epoch) is that of the current step's global batch, so a run resumes exactly at a step boundary.
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
             int num_shards = 1, int micro_batches = 1);

  /// Fills inputs and targets, each B*T tokens (row-major (B, T)); after the step's last
  /// micro-batch, advances to the next global batch.
  void next_batch(std::vector<int>& inputs, std::vector<int>& targets);

  Position position() const { return pos_; }
  /// Sets the position of the next step (its first micro-batch).
  void set_position(const Position& p);
  void reset() { pos_ = Position{}, micro_ = 0; }
  std::int64_t num_tokens() const;
  int batch_size() const { return B_; }
  int seq_len() const { return T_; }

 private:
  std::vector<std::vector<std::uint16_t>> shards_;
  std::vector<std::string> names_;
  int B_, T_, shard_, num_shards_, micro_batches_;
  int micro_ = 0;  // next micro-batch of the current step
  Position pos_;
};

}  // namespace tapestry::io
