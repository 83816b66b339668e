#include "tapestry/io/data_loader.hpp"

#include <chrono>
#include <cmath>
#include <sstream>

#include "tapestry/core/error.hpp"
#include "tapestry/io/token_dataset.hpp"

namespace tapestry::io {

namespace {
constexpr int kCycleBits = 20;  // the blending cycle: 2^20 samples
constexpr std::uint64_t kCycle = std::uint64_t(1) << kCycleBits;

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// A pseudo-random permutation of [0, n) keyed by `key`, evaluated at k: a 4-round Feistel network
/// on the smallest even number of bits that holds n, with cycle walking (reapplied until the value
/// falls below n; a bijection on [0, 2^bits) restricted this way stays a bijection on [0, n)).
std::uint64_t permute(std::uint64_t k, std::uint64_t n, std::uint64_t key) {
  if (n <= 1) return k;
  int bits = 0;
  while (bits < 64 && (std::uint64_t(1) << bits) < n) ++bits;
  bits = bits < 2 ? 2 : bits + (bits & 1);
  const int half = bits / 2;
  const std::uint64_t mask = (std::uint64_t(1) << half) - 1;
  std::uint64_t x = k;
  do {
    std::uint64_t l = x >> half, r = x & mask;
    for (std::uint64_t round = 0; round < 4; ++round) {
      const std::uint64_t f = splitmix64(key ^ (r * 0xd6e8feb86659fd93ull) ^ (round << 60)) & mask;
      const std::uint64_t nl = r;
      r = l ^ f;
      l = nl;
    }
    x = (l << half) | r;
  } while (x >= n);
  return x;
}

std::string fmt_weight(double w) {
  std::ostringstream s;
  s.precision(3);
  s << std::fixed << w;
  return s.str();
}
}  // namespace

std::vector<DataSource> parse_data_spec(const std::string& spec) {
  std::istringstream in(spec);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  require(!words.empty(), "data: no dataset given");
  if (words.size() == 1) return {DataSource{1.0, words[0]}};
  require(words.size() % 2 == 0,
          "data: '" + spec + "' is neither one path nor pairs of weight and path (\"0.7 A 0.3 B\")");
  std::vector<DataSource> out;
  for (std::size_t i = 0; i < words.size(); i += 2) {
    double w = 0;
    std::size_t used = 0;
    try {
      w = std::stod(words[i], &used);
    } catch (const std::exception&) {
      used = 0;
    }
    require(used == words[i].size(), "data: '" + words[i] + "' is not a weight (the spec is weight path pairs)");
    require(std::isfinite(w) && w > 0, "data: the weight of '" + words[i + 1] + "' must be a positive number (got " +
                                           words[i] + ")");
    out.push_back({w, words[i + 1]});
  }
  return out;
}

DataLoader::DataLoader(const std::vector<DataSource>& sources, const Options& opt) : sources_(sources), opt_(opt) {
  require(!sources.empty(), "data: no dataset given");
  require(opt.batch_size >= 1 && opt.seq_len >= 1, "data loader: batch size and sequence length must be >= 1");
  require(opt.num_shards >= 1 && opt.shard >= 0 && opt.shard < opt.num_shards && opt.micro_batches >= 1,
          "data loader shard or micro-batch count out of range");
  require(sources.size() < 65536, "data: at most 65535 datasets in a mixture");
  sequential_ = sources.size() == 1 && !opt.shuffle;
  double total = 0;
  for (const auto& s : sources) total += s.weight;
  require(std::isfinite(total) && total > 0, "data: the weights must sum to a positive number");
  const std::uint64_t T = std::uint64_t(opt.seq_len);
  const std::uint64_t need = std::uint64_t(opt.batch_size) * T * std::uint64_t(opt.num_shards) *
                                 std::uint64_t(opt.micro_batches) + 1;
  for (auto& s : sources_) {
    s.weight /= total;
    data_.push_back(TokenDataset::open(s.path));
    const std::uint64_t n = data_.back()->num_tokens();
    if (sequential_) {
      require(n >= need, "token file '" + s.path + "' holds " + std::to_string(n) +
                             " tokens, fewer than one global batch: batch_size*seq_len*dp*grad_accum+1 = " +
                             std::to_string(need));
    } else {
      require(n >= T + 1, "dataset '" + s.path + "' holds " + std::to_string(n) + " tokens, fewer than one sample (seq_len+1 = " +
                              std::to_string(T + 1) + ")");
    }
    samples_.push_back(n >= 1 ? (n - 1) / T : 0);
  }
  if (!sequential_ && sources_.size() > 1) {
    // Megatron's blending: each next sample goes to the dataset with the largest shortfall
    // weight * (samples so far + 1) - its count (ties: the first).
    const std::size_t D = sources_.size();
    cycle_src_.resize(kCycle);
    cycle_idx_.resize(kCycle);
    cycle_count_.assign(D, 0);
    for (std::uint64_t i = 0; i < kCycle; ++i) {
      std::size_t best = 0;
      double best_err = -1e300;
      for (std::size_t d = 0; d < D; ++d) {
        const double err = sources_[d].weight * double(i + 1) - double(cycle_count_[d]);
        if (err > best_err) best_err = err, best = d;
      }
      cycle_src_[i] = std::uint16_t(best);
      cycle_idx_[i] = std::uint32_t(cycle_count_[best]++);
    }
  }
  reset();
}

DataLoader::~DataLoader() = default;

void DataLoader::reset() {
  pos_ = sequential_ ? Position{0, 0, 0} : Position{-1, 0, 0};
  micro_ = 0;
}

std::int64_t DataLoader::num_tokens() const {
  std::uint64_t n = 0;
  for (const auto& d : data_) n += d->num_tokens();
  return std::int64_t(n);
}

std::string DataLoader::describe() const {
  std::ostringstream s;
  auto one = [&](std::size_t d) {
    s << "'" << sources_[d].path << "' (" << data_[d]->format_name() << ", " << data_[d]->num_tokens() << " tokens, "
      << data_[d]->num_documents() << (data_[d]->num_documents() == 1 ? " document)" : " documents)");
  };
  if (sources_.size() == 1) {
    one(0);
  } else {
    s << "mixture of " << sources_.size() << ":";
    for (std::size_t d = 0; d < sources_.size(); ++d) {
      s << (d ? ", " : " ") << fmt_weight(sources_[d].weight) << " ";
      one(d);
    }
  }
  if (sequential_) s << ", read in order";
  else s << ", samples of seq_len+1 tokens" << (opt_.shuffle ? ", shuffled per epoch (seed " + std::to_string(opt_.seed) + ")" : ", in order");
  return s.str();
}

void DataLoader::set_position(const Position& p) {
  const std::uint64_t T = std::uint64_t(opt_.seq_len);
  if (sequential_) {
    require(p.file == 0, "the checkpoint's data position is of a mixture or shuffled run; this run reads one dataset in "
                         "order (give the same --train-data and --shuffle as the run that saved it)");
    const std::uint64_t stride = std::uint64_t(opt_.batch_size) * T * std::uint64_t(opt_.num_shards) *
                                 std::uint64_t(opt_.micro_batches);
    require(p.offset >= 0 && std::uint64_t(p.offset) + stride + 1 <= data_[0]->num_tokens(),
            "data loader position (file " + std::to_string(p.file) + ", offset " + std::to_string(p.offset) +
                ") does not fit the data");
  } else {
    require(p.file == -1, "the checkpoint's data position is of a run that read one dataset in order; this run reads "
                          "a mixture or shuffles (give the same --train-data and --shuffle as the run that saved it)");
    require(p.offset >= 0, "data loader position: negative sample number " + std::to_string(p.offset));
  }
  pos_ = p;
  micro_ = 0;
}

std::pair<std::size_t, std::uint64_t> DataLoader::locate(std::uint64_t i) const {
  std::size_t d = 0;
  std::uint64_t j = i;
  if (sources_.size() > 1) {
    const std::uint64_t r = i & (kCycle - 1);
    d = cycle_src_[r];
    j = (i >> kCycleBits) * cycle_count_[d] + cycle_idx_[r];
  }
  const std::uint64_t n = samples_[d], epoch = j / n;
  std::uint64_t k = j % n;
  if (opt_.shuffle) {
    const std::uint64_t key = splitmix64(opt_.seed ^ splitmix64(0x5eed0000ull + d) ^ splitmix64(~epoch));
    k = permute(k, n, key);
  }
  return {d, k * std::uint64_t(opt_.seq_len)};
}

void DataLoader::read_row(std::size_t d, std::uint64_t off, int* in, int* tg) {
  const std::size_t T = std::size_t(opt_.seq_len);
  buf_.resize(T + 1);
  data_[d]->read(off, T + 1, buf_.data());
  for (std::size_t i = 0; i <= T; ++i) {
    std::uint32_t v = buf_[i];
    if (v >= opt_.vocab_size) {
      if (error_.empty())
        error_ = "dataset '" + sources_[d].path + "': token id " + std::to_string(v) + " at position " +
                 std::to_string(off + i) + " is >= vocab_size " + std::to_string(opt_.vocab_size);
      v = 0;
    }
    if (i < T) in[i] = int(v);
    if (i > 0) tg[i - 1] = int(v);
  }
}

void DataLoader::next_batch(std::vector<int>& inputs, std::vector<int>& targets) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::size_t B = std::size_t(opt_.batch_size), T = std::size_t(opt_.seq_len);
  inputs.resize(B * T);
  targets.resize(B * T);
  const std::uint64_t first_row = (std::uint64_t(micro_) * std::uint64_t(opt_.num_shards) + std::uint64_t(opt_.shard)) * B;
  const std::uint64_t rows = B * std::uint64_t(opt_.num_shards) * std::uint64_t(opt_.micro_batches);
  if (sequential_) {
    for (std::size_t b = 0; b < B; ++b)
      read_row(0, std::uint64_t(pos_.offset) + (first_row + b) * T, inputs.data() + b * T, targets.data() + b * T);
  } else {
    for (std::size_t b = 0; b < B; ++b) {
      const auto [d, off] = locate(std::uint64_t(pos_.offset) + first_row + b);
      read_row(d, off, inputs.data() + b * T, targets.data() + b * T);
    }
  }
  if (++micro_ == opt_.micro_batches) {
    micro_ = 0;
    if (sequential_) {
      const std::uint64_t stride = rows * T;
      pos_.offset += std::int64_t(stride);
      if (std::uint64_t(pos_.offset) + stride + 1 > data_[0]->num_tokens()) {
        pos_.offset = 0;
        pos_.epoch += 1;
      }
    } else {
      pos_.offset += std::int64_t(rows);
    }
  }
  read_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace tapestry::io
