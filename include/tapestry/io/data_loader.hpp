#pragma once
/// \file
/// \brief Deterministic loader of (B, T) batches from token datasets (io/token_dataset.hpp): one
/// dataset read in order, or a weighted mixture of datasets and/or a seeded shuffle. Nothing is
/// loaded whole: each rank reads only its own rows, through the datasets' memory maps.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tapestry::io {

class TokenDataset;

/// \brief One source of a mixture: a weight and a dataset path (llm.c file or Megatron prefix).
struct DataSource {
  double weight = 1.0;
  std::string path;
};

/// Parses a data spec: "PATH" (one dataset) or Megatron's "W1 PATH1 W2 PATH2 ..." (weights need not
/// sum to 1; they are normalised). Throws tapestry::Error for an empty spec, a missing weight or
/// path, or weights that are not finite and positive.
std::vector<DataSource> parse_data_spec(const std::string& spec);

/// \brief Batches of B rows of T+1 consecutive tokens (inputs, and targets shifted by one).
///
/// A global batch (one optimizer step) is `micro_batches` x `num_shards` x B rows. Call m
/// (0-based, cycling) of a step returns rows (m * num_shards + shard) * B ... + B - 1 of it, so
/// data-parallel ranks with gradient accumulation together read exactly the rows one rank reads
/// with any other split of the same global batch.
///
/// Two orders:
/// - sequential (one dataset, no shuffle): global batches are consecutive, llm.c's order; when
///   the next global batch does not fit, the epoch ends and reading starts again at token 0.
///   Position: (file 0, token offset of the step's global batch, epoch).
/// - samples (a mixture, or `shuffle`): dataset d has n_d = floor((tokens - 1) / T) samples,
///   sample k being tokens [k T, k T + T]. Global sample i is drawn from the dataset chosen by
///   Megatron's blending rule (each next sample goes to the dataset furthest below its share),
///   applied over a cycle of 2^20 samples; it is that dataset's sample number j, in epoch j / n_d,
///   at place j % n_d of that epoch's order: the identity, or with `shuffle` a pseudo-random
///   permutation keyed by (seed, dataset, epoch), computed per sample (a Feistel network) so that
///   no index of n_d entries is ever built or stored. Position: (file -1, next global sample, 0):
///   one integer fixes the whole future order, so a resumed run reads exactly what an
///   uninterrupted one would.
class DataLoader {
 public:
  struct Position {
    std::int64_t file = 0;    ///< sequential: the dataset (0); samples: -1
    std::int64_t offset = 0;  ///< sequential: token offset; samples: next global sample
    std::int64_t epoch = 0;
    bool operator==(const Position& o) const {
      return file == o.file && offset == o.offset && epoch == o.epoch;
    }
  };
  struct Options {
    int batch_size = 1, seq_len = 1;
    std::uint64_t vocab_size = 256;  ///< a token id >= this is a data error (see error())
    int shard = 0, num_shards = 1, micro_batches = 1;
    bool shuffle = false;
    std::uint64_t seed = 1234;
  };

  /// Opens the datasets (memory-mapped). Throws tapestry::Error if one is missing or bad, or holds
  /// fewer tokens than one global batch (sequential) or one sample (samples).
  DataLoader(const std::vector<DataSource>& sources, const Options& opt);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  /// Fills inputs and targets, each B*T tokens (row-major (B, T)); after the step's last
  /// micro-batch, advances to the next global batch. A token id >= vocab_size is replaced by 0 and
  /// recorded in error(): the caller stops the job at the step's vote (no rank throws alone).
  void next_batch(std::vector<int>& inputs, std::vector<int>& targets);

  Position position() const { return pos_; }
  /// Sets the position of the next step (its first micro-batch). Throws tapestry::Error if it does
  /// not fit the data or was saved by a loader of the other order.
  void set_position(const Position& p);
  void reset();
  std::int64_t num_tokens() const;
  /// The first data error met (empty: none).
  const std::string& error() const { return error_; }
  /// Seconds spent in next_batch() since construction (reads and checks).
  double read_seconds() const { return read_s_; }
  /// One line: the datasets, their formats, sizes and weights, and the order.
  std::string describe() const;
  bool sequential() const { return sequential_; }

 private:
  void read_row(std::size_t source, std::uint64_t token_offset, int* in, int* tg);
  /// Dataset and token offset of global sample i (samples order).
  std::pair<std::size_t, std::uint64_t> locate(std::uint64_t i) const;

  std::vector<DataSource> sources_;
  std::vector<std::unique_ptr<TokenDataset>> data_;
  std::vector<std::uint64_t> samples_;     // n_d per dataset (samples order)
  std::vector<std::uint16_t> cycle_src_;   // per place in the blending cycle: the dataset
  std::vector<std::uint32_t> cycle_idx_;   //   and its sample number within the cycle
  std::vector<std::uint64_t> cycle_count_; // samples of each dataset per cycle
  Options opt_;
  bool sequential_ = true;
  int micro_ = 0;  // next micro-batch of the current step
  Position pos_;
  std::vector<std::uint32_t> buf_;
  std::string error_;
  double read_s_ = 0;
};

}  // namespace tapestry::io
