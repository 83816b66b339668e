#include "tapestry/io/checkpoint.hpp"

#include <hdf5.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <type_traits>
#include <utility>

#include "tapestry/core/error.hpp"

namespace tapestry::io {

namespace {

/// Owns one HDF5 identifier.
class H5 {
 public:
  H5(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~H5() {
    if (id_ >= 0) close_(id_);
  }
  H5(const H5&) = delete;
  H5& operator=(const H5&) = delete;
  H5(H5&& o) noexcept : id_(std::exchange(o.id_, -1)), close_(o.close_) {}
  operator hid_t() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

/// An HDF5 read that failed: the file's fault (one error line).
void check(herr_t r, const std::string& what) {
  if (r < 0) throw Error(what);
}

/// An HDF5 write that failed: a library error (the other ranks writing the same file may be inside
/// a collective call), which stops the whole job.
void check_write(herr_t r, const std::string& what) {
  if (r >= 0) return;
  // The innermost entry of HDF5's error stack says what failed below (MPI-IO, the file system).
  std::string cause;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, [](unsigned n, const H5E_error2_t* e, void* out) -> herr_t {
    if (n == 0 && e->desc != nullptr) *static_cast<std::string*>(out) = e->desc;
    return 0;
  }, &cause);
  throw LibraryError("HDF5: " + what + (cause.empty() ? "" : ": " + cause));
}

/// HDF5 prints its own error stack by default; Tapestry reports one line instead.
void quiet_hdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

// ---- attributes
void attr(hid_t obj, const char* name, std::int64_t v) {
  H5 space(H5Screate(H5S_SCALAR), H5Sclose);
  H5 a(H5Acreate2(obj, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  check_write(H5Awrite(a, H5T_NATIVE_INT64, &v), std::string("cannot write attribute ") + name);
}
void attr(hid_t obj, const char* name, std::uint64_t v) {
  H5 space(H5Screate(H5S_SCALAR), H5Sclose);
  H5 a(H5Acreate2(obj, name, H5T_STD_U64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  check_write(H5Awrite(a, H5T_NATIVE_UINT64, &v), std::string("cannot write attribute ") + name);
}
void attr(hid_t obj, const char* name, double v) {
  H5 space(H5Screate(H5S_SCALAR), H5Sclose);
  H5 a(H5Acreate2(obj, name, H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  check_write(H5Awrite(a, H5T_NATIVE_DOUBLE, &v), std::string("cannot write attribute ") + name);
}
void attr(hid_t obj, const char* name, const std::string& v) {
  H5 space(H5Screate(H5S_SCALAR), H5Sclose);
  H5 type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type, std::max<std::size_t>(1, v.size()));
  H5Tset_strpad(type, H5T_STR_NULLPAD);
  H5 a(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  check_write(H5Awrite(a, type, v.empty() ? "" : v.data()), std::string("cannot write attribute ") + name);
}
void attr(hid_t obj, const char* name, const std::vector<std::uint64_t>& v) {
  const hsize_t n = v.size();
  H5 space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  H5 a(H5Acreate2(obj, name, H5T_STD_U64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  check_write(H5Awrite(a, H5T_NATIVE_UINT64, v.data()), std::string("cannot write attribute ") + name);
}
void attr(hid_t obj, const char* name, int v) { attr(obj, name, std::int64_t(v)); }
void attr(hid_t obj, const char* name, const char* v) { attr(obj, name, std::string(v)); }

struct Reader {
  std::string path;
  bool has(hid_t obj, const char* name) const { return H5Aexists(obj, name) > 0; }
  H5 open(hid_t obj, const char* name) const {
    require(has(obj, name), "checkpoint '" + path + "' lacks attribute '" + name + "'");
    return H5(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  }
  std::int64_t i64(hid_t obj, const char* name) const {
    std::int64_t v = 0;
    check(H5Aread(open(obj, name), H5T_NATIVE_INT64, &v), "checkpoint '" + path + "': bad attribute " + name);
    return v;
  }
  std::uint64_t u64(hid_t obj, const char* name) const {
    std::uint64_t v = 0;
    check(H5Aread(open(obj, name), H5T_NATIVE_UINT64, &v), "checkpoint '" + path + "': bad attribute " + name);
    return v;
  }
  double f64(hid_t obj, const char* name) const {
    double v = 0;
    check(H5Aread(open(obj, name), H5T_NATIVE_DOUBLE, &v), "checkpoint '" + path + "': bad attribute " + name);
    return v;
  }
  std::string str(hid_t obj, const char* name) const {
    H5 a = open(obj, name);
    H5 type(H5Aget_type(a), H5Tclose);
    require(H5Tget_class(type) == H5T_STRING, "checkpoint '" + path + "': attribute " + name + " is not a string");
    std::string s(H5Tget_size(type), '\0');
    check(H5Aread(a, type, s.data()), "checkpoint '" + path + "': bad attribute " + name);
    s.resize(std::strlen(s.c_str()));
    return s;
  }
};

/// Opens group `p`, creating it (and its parents) when it does not exist yet.
H5 group(hid_t file, const std::string& p) {
  if (H5Lexists(file, p.c_str(), H5P_DEFAULT) > 0) {
    H5 g(H5Gopen2(file, p.c_str(), H5P_DEFAULT), H5Gclose);
    require(g.ok(), "cannot open group " + p);
    return g;
  }
  H5 lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl, 1);
  H5 g(H5Gcreate2(file, p.c_str(), lcpl, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
  require(g.ok(), "cannot create group " + p);
  return g;
}

/// A rectangular piece of a dataset and where its elements start in a contiguous buffer.
struct Block {
  hsize_t start[2] = {0, 0}, count[2] = {0, 0};
  std::size_t buffer_offset = 0;
};

/// Flat elements [a, b) of a 1-D or 2-D row-major dataset as at most three rectangles (a partial
/// first row, whole rows, a partial last row). Each is transferred with a memory space of its own
/// shape: HDF5 maps equal-shaped selections chunk by chunk, but falls back to element-by-element
/// mapping when a 2-D file selection meets a 1-D memory space (two orders of magnitude slower).
std::vector<Block> flat_blocks(const std::vector<std::int64_t>& shape, std::size_t a, std::size_t b) {
  std::vector<Block> out;
  if (a >= b) return out;
  if (shape.size() == 1) {
    Block k;
    k.start[0] = a, k.count[0] = b - a;
    out.push_back(k);
    return out;
  }
  const std::size_t C = std::size_t(shape[1]);
  auto add = [&](std::size_t row, std::size_t col, std::size_t rows, std::size_t cols) {
    if (rows == 0 || cols == 0) return;
    Block k;
    k.start[0] = row, k.start[1] = col, k.count[0] = rows, k.count[1] = cols;
    k.buffer_offset = row * C + col - a;
    out.push_back(k);
  };
  std::size_t r0 = a / C;
  const std::size_t c0 = a % C, r1 = b / C, c1 = b % C;
  if (r0 == r1) {
    add(r0, c0, 1, c1 - c0);
    return out;
  }
  if (c0 > 0) {
    add(r0, c0, 1, C - c0);
    ++r0;
  }
  add(r0, 0, r1 - r0, C);
  add(r1, 0, 1, c1);
  return out;
}

/// The rectangles of tensor `t` that `runs` (sorted by whole index) cover, each contiguous in the
/// rank's buffer (Block::buffer_offset: its local index): runs merged where they continue one
/// another (a TP rank's rows of a column block), then cut into pieces of at most
/// kMaxTransferElements.
std::vector<Block> tensor_blocks(const FlatTensor& t, const std::vector<FlatRun>& runs) {
  std::vector<Block> merged;
  const bool two_d = t.shape.size() == 2;
  auto it = std::upper_bound(runs.begin(), runs.end(), t.offset,
                             [](std::size_t v, const FlatRun& r) { return v < r.whole + r.n; });
  for (; it != runs.end() && it->whole < t.offset + t.size; ++it) {
    const std::size_t a = std::max(it->whole, t.offset), b = std::min(it->whole + it->n, t.offset + t.size);
    if (a >= b) continue;
    for (auto k : flat_blocks(t.shape, a - t.offset, b - t.offset)) {
      k.buffer_offset += it->local + (a - it->whole);
      if (!merged.empty()) {
        auto& p = merged.back();
        const std::size_t pn = std::size_t(p.count[0]) * (two_d ? std::size_t(p.count[1]) : 1);
        const bool follows = two_d ? p.start[1] == k.start[1] && p.count[1] == k.count[1] && p.start[0] + p.count[0] == k.start[0]
                                   : p.start[0] + p.count[0] == k.start[0];
        if (follows && p.buffer_offset + pn == k.buffer_offset) {
          p.count[0] += k.count[0];
          continue;
        }
      }
      merged.push_back(k);
    }
  }
  std::vector<Block> out;
  for (const auto& k : merged) {
    const std::size_t row = two_d ? std::size_t(k.count[1]) : 1;
    const std::size_t step = std::max<std::size_t>(1, kMaxTransferElements / row);
    for (hsize_t r = 0; r < k.count[0]; r += step) {
      Block p = k;
      p.start[0] = k.start[0] + r;
      p.count[0] = std::min<hsize_t>(step, k.count[0] - r);
      p.buffer_offset = k.buffer_offset + std::size_t(r) * row;
      out.push_back(p);
    }
  }
  return out;
}

/// Sorted by whole index (the order tensor_blocks searches in).
std::vector<FlatRun> by_whole(std::vector<FlatRun> runs) {
  std::sort(runs.begin(), runs.end(), [](const FlatRun& a, const FlatRun& b) { return a.whole < b.whole; });
  return runs;
}

std::vector<hsize_t> dims(const std::vector<std::int64_t>& shape) {
  return std::vector<hsize_t>(shape.begin(), shape.end());
}

/// Chunks of about 1 MiB, whole rows.
std::vector<hsize_t> chunk_dims(const std::vector<std::int64_t>& shape) {
  const hsize_t target = (1u << 20) / sizeof(float);
  if (shape.size() == 1) return {std::min<hsize_t>(hsize_t(shape[0]), target)};
  const hsize_t C = hsize_t(shape[1]);
  return {std::max<hsize_t>(1, std::min<hsize_t>(hsize_t(shape[0]), target / C)), C};
}

std::string shape_str(const std::vector<std::int64_t>& s) {
  std::string r = "(";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + ")";
}

/// How a dataset is cut into chunks: whole rows (a vector: runs of elements, as rows of 1).
struct ChunkGrid {
  std::size_t rows = 0, cols = 1, chunk_rows = 1;
  std::size_t count() const { return (rows + chunk_rows - 1) / chunk_rows; }
};
ChunkGrid chunk_grid(const std::vector<std::int64_t>& shape, const std::vector<hsize_t>& chunk) {
  ChunkGrid g;
  g.rows = std::size_t(shape[0]);
  g.cols = shape.size() == 2 ? std::size_t(shape[1]) : 1;
  g.chunk_rows = std::size_t(chunk[0]);
  return g;
}

/// Adds block k's contribution (data: its rows, contiguous) to the chunk checksums `sums` of its
/// dataset. A chunk's checksum is the sum over its elements of (float32 bits as uint32) x (1 +
/// the element's index inside the chunk), mod 2^64: additive over the ranks that write parts of a
/// chunk, and it changes with any flipped bit or swapped pair of values.
/// sums[i] is chunk chunk0 + i's. Returns the block's plain checksum (the sum of the bits).
std::uint64_t add_chunk_sums(const ChunkGrid& g, const Block& k, std::size_t rank, const float* data,
                             std::uint64_t* sums, std::size_t chunk0 = 0) {
  const std::size_t r0 = std::size_t(k.start[0]), nr = std::size_t(k.count[0]);
  const std::size_t c0 = rank == 2 ? std::size_t(k.start[1]) : 0, nc = rank == 2 ? std::size_t(k.count[1]) : 1;
  require(nc <= 0xffffffffu, "checkpoint: a row of more than 2^32 elements");
  std::uint64_t plain = 0;
  for (std::size_t r = 0; r < nr; ++r) {
    const std::size_t row = r0 + r, chunk = row / g.chunk_rows;
    const std::uint64_t base = std::uint64_t(row - chunk * g.chunk_rows) * g.cols + c0 + 1;
    // sum of u_c (base + c) = base * sum(u_c) + sum(u_c c): 32 x 32-bit products, which vectorize
    std::uint64_t su = 0, sc = 0;
    const float* x = data + r * nc;
    for (std::uint32_t c = 0; c < std::uint32_t(nc); ++c) {
      std::uint32_t u;
      std::memcpy(&u, x + c, 4);
      su += u;
      sc += std::uint64_t(u) * c;
    }
    sums[chunk - chunk0] += base * su + sc;
    plain += su;
  }
  return plain;
}

H5 open_file(const std::string& path) {
  quiet_hdf5();
  {
    std::ifstream f(path, std::ios::binary);
    require(bool(f), "cannot open checkpoint '" + path + "'");
  }
  require(H5Fis_hdf5(path.c_str()) > 0, "checkpoint '" + path + "' is not an HDF5 file (truncated or not a checkpoint)");
  H5 file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  require(file.ok(), "checkpoint '" + path + "' cannot be opened by HDF5 (truncated or corrupted)");
  return file;
}

}  // namespace

std::uint64_t checksum(const float* x, std::size_t n) {
  std::uint64_t s = 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t u;
    std::memcpy(&u, x + i, 4);
    s += u;
  }
  return s;
}

namespace {
/// Everything write_checkpoint() puts into the open file: collective over `comm`.
void write_contents(hid_t file, const std::string& path, MPI_Comm comm, const CheckpointState& st,
                    const std::vector<FlatTensor>& tensors, const std::vector<FlatSection>& sections) {
  H5 dxpl(H5Pcreate(H5P_DATASET_XFER), H5Pclose);
  H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE);
  H5 lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl, 1);

  // Every dataset: created collectively; each rank writes its rectangles of it, straight from its
  // buffer. Collective writes need the same number of calls on every rank: the most any rank
  // makes, selecting nothing where it has no more.
  auto write_section = [&](const FlatSection& sec) {
    std::vector<std::vector<Block>> blocks(tensors.size());
    std::vector<std::uint64_t> calls(tensors.size());
    const auto runs = by_whole(sec.runs);
    // Per tensor its checksum, then every chunk's: summed over the ranks in one call.
    std::vector<std::size_t> first_chunk(tensors.size());
    std::size_t n_sums = tensors.size();
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      blocks[i] = tensor_blocks(tensors[i], runs);
      calls[i] = blocks[i].size();
      first_chunk[i] = n_sums;
      n_sums += chunk_grid(tensors[i].shape, chunk_dims(tensors[i].shape)).count();
    }
    MPI_Allreduce(MPI_IN_PLACE, calls.data(), int(calls.size()), MPI_UINT64_T, MPI_MAX, comm);
    std::vector<std::uint64_t> sums(n_sums, 0);
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      const auto& t = tensors[i];
      const auto d = dims(t.shape), c = chunk_dims(t.shape);
      const ChunkGrid grid = chunk_grid(t.shape, c);
      H5 space(H5Screate_simple(int(d.size()), d.data(), nullptr), H5Sclose);
      H5 dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
      // Chunked, unfiltered: HDF5 1.10's collective path for filtered (Fletcher32) chunks writes
      // at a tenth of the unfiltered rate (docs/performance.md); the chunk checksums take its place.
      H5Pset_chunk(dcpl, int(c.size()), c.data());
      // No fill values: parallel HDF5 allocates every chunk at creation and would first write the
      // whole dataset as zeros (half of the bytes written); every element is written below.
      H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
      H5Pset_attr_phase_change(dcpl, 0, 0);  // dense attribute storage: chunk_checksums may pass 64 KiB
      const std::string name = sec.prefix + "/" + t.path;
      H5 ds(H5Dcreate2(file, name.c_str(), H5T_IEEE_F32LE, space, lcpl, dcpl, H5P_DEFAULT), H5Dclose);
      require(ds.ok(), "cannot create dataset " + name + " in '" + path + "'");
      const int rank = int(t.shape.size());
      for (std::size_t k = 0; k < calls[i]; ++k) {
        H5 fs(H5Scopy(space), H5Sclose);
        const hsize_t one[2] = {1, 1};
        const bool mine = k < blocks[i].size();
        H5 mem(H5Screate_simple(rank, mine ? blocks[i][k].count : one, nullptr), H5Sclose);
        const float* p = sec.data;
        if (mine) {
          H5Sselect_hyperslab(fs, H5S_SELECT_SET, blocks[i][k].start, nullptr, blocks[i][k].count, nullptr);
          p = sec.data + blocks[i][k].buffer_offset;
          sums[i] += add_chunk_sums(grid, blocks[i][k], std::size_t(rank), p, sums.data() + first_chunk[i]);
        } else {
          H5Sselect_none(fs);
          H5Sselect_none(mem);
        }
        check_write(H5Dwrite(ds, H5T_NATIVE_FLOAT, mem, fs, dxpl, p), "writing " + name + " to '" + path + "' failed");
      }
    }
    require(sums.size() < std::size_t(1) << 31, "checkpoint: too many chunks in one section");
    MPI_Allreduce(MPI_IN_PLACE, sums.data(), int(sums.size()), MPI_UINT64_T, MPI_SUM, comm);
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      const auto& t = tensors[i];
      H5 ds(H5Dopen2(file, (sec.prefix + "/" + t.path).c_str(), H5P_DEFAULT), H5Dclose);
      attr(ds, "checksum", sums[i]);
      const auto c0 = sums.begin() + std::ptrdiff_t(first_chunk[i]);
      const auto nc = std::ptrdiff_t(chunk_grid(t.shape, chunk_dims(t.shape)).count());
      attr(ds, "chunk_checksums", std::vector<std::uint64_t>(c0, c0 + nc));
      attr(ds, "llmc_name", t.llmc_name);
      attr(ds, "layout", t.shape.size() == 2 ? "row-major (out_features, in_features) or (rows, channels)" : "vector");
    }
  };

  {
    H5 g = group(file, "/model");
    attr(g, "n_layer", st.model.n_layer);
    attr(g, "n_head", st.model.n_head);
    attr(g, "d_model", st.model.d_model);
    attr(g, "max_seq_len", st.model.max_seq_len);
    attr(g, "vocab_size", st.model.vocab_size);
    attr(g, "padded_vocab_size", st.model.vocab_padded());
    const auto& m = st.model;
    attr(g, "architecture", m.is_gpt2() ? "GPT-2: learned positions, pre-LayerNorm, GELU(tanh) MLP, tied output layer"
                                        : "pre-norm decoder (model spec in these attributes; docs/model-spec.md)");
    ModelConfig resolved = m;  // 0 (derived) written as the value it stands for
    resolved.n_kv_head = m.kv_heads(), resolved.ffn_dim = m.ffn();
    for_each_block_key(resolved, [&](const char* name, const auto& v, const char*) {
      using V = std::decay_t<decltype(v)>;
      if constexpr (std::is_same_v<V, bool>) attr(g, name, int(v));
      else attr(g, name, v);
    });
    attr(g, "xielu_beta", 0.5);
    attr(g, "xielu_eps", -1e-6);
    attr(g, "dtype", "float32");
  }
  {
    H5 g = group(file, "/optimizer");
    attr(g, "name", "adamw");
    attr(g, "t", st.adam_t);
    attr(g, "lr", st.optim.lr);
    attr(g, "min_lr_ratio", st.optim.min_lr_ratio);
    attr(g, "warmup_steps", st.optim.warmup_steps);
    attr(g, "total_steps", st.total_steps);
    attr(g, "schedule", "linear warmup, then cosine decay to lr * min_lr_ratio at total_steps");
    attr(g, "beta1", st.optim.beta1);
    attr(g, "beta2", st.optim.beta2);
    attr(g, "eps", st.optim.eps);
    attr(g, "weight_decay", st.optim.weight_decay);
    attr(g, "grad_clip", st.optim.grad_clip);
  }
  for (const auto& sec : sections) write_section(sec);
  if (st.diloco_sites > 0) {
    H5 g = group(file, "/diloco");
    attr(g, "sites", std::int64_t(st.diloco_sites));
    attr(g, "sites_in_file", std::int64_t(st.diloco_sites_in_file));
    attr(g, "outer_steps", std::int64_t(st.outer_steps));
    attr(g, "outer_lr", st.outer_lr);
    attr(g, "outer_momentum", st.outer_momentum);
    attr(g, "outer_nesterov", std::int64_t(st.outer_nesterov ? 1 : 0));
    attr(g, "outer_fragments", std::int64_t(st.outer_fragments));
    attr(g, "outer_delay", std::int64_t(st.outer_delay));
    attr(g, "outer_mix", st.outer_mix);
    attr(g, "outer_pending_step", st.outer_pending_step);
    attr(g, "outer_residual", std::int64_t(st.outer_residual ? 1 : 0));
    if (!st.outer_site_steps.empty()) attr(g, "outer_site_steps", st.outer_site_steps);
    if (!st.outer_contributors.empty()) attr(g, "outer_contributors", st.outer_contributors);
    attr(g, "note", "site 0's inner state (or, with sites_in_file = 1, this federated site's own) is /model and "
                    "/optimizer; site s > 0's is under site_SS; outer/model and outer/momentum: the outer SGD's "
                    "parameters and momentum; outer/pending (outer_pending_step >= 0): the summed pseudo-gradient "
                    "of the fragment in flight; site_SS/outer_residual (outer_residual = 1): each site's "
                    "error-feedback residual; outer_site_steps (--outer-quota): the inner steps each site "
                    "computed, as of the last merge; outer_contributors (elastic federation): the sites each "
                    "outer exchange summed, as changes 'sent-after-step:site,site;...'");
  }
  {
    H5 g = group(file, "/data");
    attr(g, "train_data", st.train_data);
    attr(g, "file_index", st.loader_file);
    attr(g, "offset_tokens", st.loader_offset);
    attr(g, "epoch", st.loader_epoch);
    attr(g, "batch_size", st.batch_size);
    attr(g, "seq_len", st.seq_len);
    attr(g, "global_batch", st.global_batch);
  }
  {
    H5 g = group(file, "/rng");
    attr(g, "init_seed", st.seed);
    attr(g, "note", "parameters are initialised from init_seed; no random numbers are drawn after that");
  }
  H5 root(H5Gopen2(file, "/", H5P_DEFAULT), H5Gclose);
  attr(root, "format", kCheckpointFormatName);
  attr(root, "format_version", kCheckpointFormatVersion);
  attr(root, "program_version", st.program_version);
  attr(root, "step", st.step);
  attr(root, "tokens_seen", st.tokens_seen);
  attr(root, "wall_time_s", st.wall_time_s);
  attr(root, "tp", st.tp);
  attr(root, "pp", st.pp);
  attr(root, "dp", st.dp);
  attr(root, "zero", st.zero);
  const std::time_t now = std::time(nullptr);
  char iso[32];
  std::strftime(iso, sizeof(iso), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  std::string created(iso);
  MPI_Bcast(created.data(), int(created.size()), MPI_CHAR, 0, comm);  // identical on all ranks
  attr(root, "created_utc", created);
  attr(root, "complete", std::int64_t(1));  // last: a file without it was cut short
  check_write(H5Fflush(file, H5F_SCOPE_GLOBAL), "flushing '" + path + "' failed (disk full?)");
}

/// A write failed on this rank in the middle of collective HDF5 calls. The other ranks wait (or
/// will) in the next collective call, and closing the file is collective too, so unwinding would
/// hang the job: one line naming the rank and the failure, and the job stops here. The file is a
/// temporary that was never published; the previous checkpoint stays as it was.
[[noreturn]] void abort_write(MPI_Comm comm, const std::string& what) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  std::fprintf(stderr, "tapestry: error: rank %d of the checkpoint writers: %s\n", rank, what.c_str());
  std::fflush(stderr);
  MPI_Abort(comm, 2);
  std::abort();  // not reached
}
}  // namespace

void write_checkpoint(const std::string& path, MPI_Comm comm, const CheckpointState& st,
                      const std::vector<FlatTensor>& tensors, const std::vector<FlatSection>& sections) {
  quiet_hdf5();
  H5 fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL);
  H5 file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl), H5Fclose);
  // Every rank learns whether every rank could open it (one rank's full or read-only disk must not
  // leave the others waiting in the collective calls that follow).
  int opened = file.ok() ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &opened, 1, MPI_INT, MPI_MIN, comm);
  require(opened == 1, "cannot create checkpoint file '" + path + "'" + (file.ok() ? " on another rank" : ""));
  try {
    write_contents(file, path, comm, st, tensors, sections);
  } catch (const LibraryError& e) {
    abort_write(comm, e.what());
  }
}

CheckpointState read_checkpoint_state(const std::string& path) {
  H5 file = open_file(path);
  Reader r{path};
  H5 root(H5Gopen2(file, "/", H5P_DEFAULT), H5Gclose);
  require(r.has(root, "format") && r.str(root, "format") == kCheckpointFormatName,
          "'" + path + "' is an HDF5 file but not a Tapestry checkpoint");
  const auto version = r.i64(root, "format_version");
  require(version == 1 || version == kCheckpointFormatVersion,
          "checkpoint '" + path + "' has format version " + std::to_string(version) +
              "; this program reads versions 1 and " + std::to_string(kCheckpointFormatVersion));
  require(r.has(root, "complete") && r.i64(root, "complete") == 1,
          "checkpoint '" + path + "' is incomplete (its write was cut short)");
  CheckpointState st;
  st.program_version = r.str(root, "program_version");
  st.step = r.i64(root, "step");
  st.tokens_seen = r.i64(root, "tokens_seen");
  st.wall_time_s = r.f64(root, "wall_time_s");
  st.tp = int(r.i64(root, "tp"));
  st.pp = int(r.i64(root, "pp"));
  st.dp = int(r.i64(root, "dp"));
  st.zero = int(r.i64(root, "zero"));
  H5 model(H5Gopen2(file, "/model", H5P_DEFAULT), H5Gclose);
  require(model.ok(), "checkpoint '" + path + "' has no /model group");
  st.model.n_layer = int(r.i64(model, "n_layer"));
  st.model.n_head = int(r.i64(model, "n_head"));
  st.model.d_model = int(r.i64(model, "d_model"));
  st.model.max_seq_len = int(r.i64(model, "max_seq_len"));
  st.model.vocab_size = int(r.i64(model, "vocab_size"));
  st.model.padded_vocab_size = int(r.i64(model, "padded_vocab_size"));
  st.format_version = int(version);
  if (version >= 2) {  // the model spec (version 1 held GPT-2 only: the defaults)
    auto& m = st.model;
    for_each_block_key(m, [&](const char* name, auto& v, const char*) {
      using V = std::decay_t<decltype(v)>;
      if constexpr (std::is_same_v<V, bool>) v = r.i64(model, name) != 0;
      else if constexpr (std::is_same_v<V, int>) v = int(r.i64(model, name));
      else if constexpr (std::is_same_v<V, double>) v = r.f64(model, name);
      else v = r.str(model, name);
    });
    try {
      validate(m);
    } catch (const Error& e) {
      throw Error("checkpoint '" + path + "': bad model spec: " + e.what());
    }
  }
  H5 opt(H5Gopen2(file, "/optimizer", H5P_DEFAULT), H5Gclose);
  require(opt.ok(), "checkpoint '" + path + "' has no /optimizer group");
  st.adam_t = r.i64(opt, "t");
  st.total_steps = r.i64(opt, "total_steps");
  st.optim.lr = r.f64(opt, "lr");
  st.optim.min_lr_ratio = r.f64(opt, "min_lr_ratio");
  st.optim.warmup_steps = int(r.i64(opt, "warmup_steps"));
  st.optim.beta1 = r.f64(opt, "beta1");
  st.optim.beta2 = r.f64(opt, "beta2");
  st.optim.eps = r.f64(opt, "eps");
  st.optim.weight_decay = r.f64(opt, "weight_decay");
  st.optim.grad_clip = r.f64(opt, "grad_clip");
  H5 data(H5Gopen2(file, "/data", H5P_DEFAULT), H5Gclose);
  require(data.ok(), "checkpoint '" + path + "' has no /data group");
  st.train_data = r.str(data, "train_data");
  st.loader_file = r.i64(data, "file_index");
  st.loader_offset = r.i64(data, "offset_tokens");
  st.loader_epoch = r.i64(data, "epoch");
  st.batch_size = int(r.i64(data, "batch_size"));
  st.seq_len = int(r.i64(data, "seq_len"));
  st.global_batch = int(r.i64(data, "global_batch"));
  H5 rng(H5Gopen2(file, "/rng", H5P_DEFAULT), H5Gclose);
  require(rng.ok(), "checkpoint '" + path + "' has no /rng group");
  st.seed = r.u64(rng, "init_seed");
  if (H5Lexists(file, "/diloco", H5P_DEFAULT) > 0) {
    H5 dl(H5Gopen2(file, "/diloco", H5P_DEFAULT), H5Gclose);
    st.diloco_sites = int(r.i64(dl, "sites"));
    st.diloco_sites_in_file = int(r.i64(dl, "sites_in_file"));
    st.outer_steps = int(r.i64(dl, "outer_steps"));
    st.outer_lr = r.f64(dl, "outer_lr");
    st.outer_momentum = r.f64(dl, "outer_momentum");
    st.outer_nesterov = r.i64(dl, "outer_nesterov") != 0;
    if (r.has(dl, "outer_fragments")) {  // written since Streaming DiLoCo
      st.outer_fragments = int(r.i64(dl, "outer_fragments"));
      st.outer_delay = int(r.i64(dl, "outer_delay"));
      st.outer_mix = r.f64(dl, "outer_mix");
      st.outer_pending_step = r.i64(dl, "outer_pending_step");
      st.outer_residual = r.i64(dl, "outer_residual") != 0;
    }
    if (r.has(dl, "outer_site_steps")) st.outer_site_steps = r.str(dl, "outer_site_steps");
    if (r.has(dl, "outer_contributors")) st.outer_contributors = r.str(dl, "outer_contributors");
  }
  return st;
}

namespace {
/// Opens dataset `name` and checks its shape against `t`.
H5 open_tensor(hid_t file, const std::string& path, const std::string& name, const FlatTensor& t) {
  H5 ds(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose);
  require(ds.ok(), "checkpoint '" + path + "' lacks tensor " + name);
  H5 space(H5Dget_space(ds), H5Sclose);
  std::vector<hsize_t> d(std::size_t(std::max(0, H5Sget_simple_extent_ndims(space))));
  H5Sget_simple_extent_dims(space, d.data(), nullptr);
  std::vector<std::int64_t> got(d.begin(), d.end());
  require(got == t.shape, "checkpoint '" + path + "': tensor " + name + " has shape " + shape_str(got) +
                              ", the run expects " + shape_str(t.shape));
  return ds;
}

/// Calls f(tensor, open dataset, block) for every block of `runs` in the buffer under `prefix`.
template <class F>
void for_each_block(hid_t file, const std::string& path, const std::string& prefix,
                    const std::vector<FlatTensor>& tensors, const std::vector<FlatRun>& runs, F&& f) {
  for (const auto& t : tensors) {
    const auto blocks = tensor_blocks(t, runs);
    if (blocks.empty()) continue;
    const std::string name = prefix + "/" + t.path;
    H5 ds = open_tensor(file, path, name, t);
    for (const auto& k : blocks) f(t, name, ds, k);
  }
}

/// Reads one block of a dataset into dst (its rows times its columns elements).
void read_block(hid_t ds, const std::string& path, const std::string& name, const FlatTensor& t, const Block& k,
                float* dst) {
  H5 space(H5Dget_space(ds), H5Sclose);
  H5Sselect_hyperslab(space, H5S_SELECT_SET, k.start, nullptr, k.count, nullptr);
  H5 mem(H5Screate_simple(int(t.shape.size()), k.count, nullptr), H5Sclose);
  check(H5Dread(ds, H5T_NATIVE_FLOAT, mem, space, H5P_DEFAULT, dst),
        "checkpoint '" + path + "': tensor " + name + " is corrupted (Fletcher32 checksum mismatch) or unreadable");
}

/// True when the datasets under `prefix` carry chunk checksums (files before them rely on HDF5's
/// Fletcher32 filter instead).
bool has_chunk_sums(hid_t file, const std::string& prefix, const std::vector<FlatTensor>& tensors) {
  if (tensors.empty()) return false;
  const std::string name = prefix + "/" + tensors.front().path;
  if (H5Lexists(file, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
  H5 ds(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose);
  return ds.ok() && H5Aexists(ds, "chunk_checksums") > 0;
}

/// Reads the whole chunks that `runs` touch under `prefix`, checks each against the checksum its
/// dataset stores for it, and calls f(name, block, row of the block, its values) for every row of
/// every block (one chunk in memory at a time).
template <class F>
void for_each_verified_row(hid_t file, const std::string& path, const std::string& prefix,
                           const std::vector<FlatTensor>& tensors, const std::vector<FlatRun>& runs, F&& f) {
  const auto sorted = by_whole(runs);
  std::vector<float> buf;
  for (const auto& t : tensors) {
    const ChunkGrid g = chunk_grid(t.shape, chunk_dims(t.shape));
    const auto blocks = tensor_blocks(t, sorted);
    if (blocks.empty()) continue;
    const std::string name = prefix + "/" + t.path;
    H5 ds = open_tensor(file, path, name, t);
    std::vector<std::uint64_t> stored(g.count());
    {
      require(H5Aexists(ds, "chunk_checksums") > 0, "checkpoint '" + path + "': tensor " + name + " lacks chunk_checksums");
      H5 a(H5Aopen(ds, "chunk_checksums", H5P_DEFAULT), H5Aclose);
      H5 as(H5Aget_space(a), H5Sclose);
      const hssize_t got = H5Sget_simple_extent_npoints(as);
      require(got == hssize_t(stored.size()), "checkpoint '" + path + "': tensor " + name + " has " +
                                                  std::to_string(got) + " chunk checksums for " +
                                                  std::to_string(stored.size()) + " chunks");
      check(H5Aread(a, H5T_NATIVE_UINT64, stored.data()), "checkpoint '" + path + "': bad chunk_checksums of " + name);
    }
    const bool two_d = t.shape.size() == 2;
    std::vector<std::size_t> chunks;
    for (const auto& b : blocks)
      for (std::size_t k = std::size_t(b.start[0]) / g.chunk_rows; k * g.chunk_rows < b.start[0] + b.count[0]; ++k)
        chunks.push_back(k);
    std::sort(chunks.begin(), chunks.end());
    chunks.erase(std::unique(chunks.begin(), chunks.end()), chunks.end());
    for (const std::size_t k : chunks) {
      const std::size_t r0 = k * g.chunk_rows, r1 = std::min(g.rows, r0 + g.chunk_rows);
      Block whole;
      whole.start[0] = r0, whole.count[0] = r1 - r0, whole.count[1] = g.cols;
      buf.resize((r1 - r0) * g.cols);
      read_block(ds, path, name, t, whole, buf.data());
      std::uint64_t sum = 0;
      add_chunk_sums(g, whole, t.shape.size(), buf.data(), &sum, k);
      require(sum == stored[k], "checkpoint '" + path + "': tensor " + name + " is corrupted (chunk " +
                                    std::to_string(k) + "'s checksum does not match)");
      for (const auto& b : blocks) {
        const std::size_t b0 = std::size_t(b.start[0]), b1 = b0 + std::size_t(b.count[0]);
        const std::size_t c0 = two_d ? std::size_t(b.start[1]) : 0;
        for (std::size_t r = std::max(r0, b0); r < std::min(r1, b1); ++r)
          f(name, b, r - b0, buf.data() + (r - r0) * g.cols + c0);
      }
    }
  }
}

void read_runs_open(hid_t file, const std::string& path, const std::string& prefix,
                    const std::vector<FlatTensor>& tensors, float* dst, const std::vector<FlatRun>& runs) {
  if (!has_chunk_sums(file, prefix, tensors)) {  // an older file: HDF5's Fletcher32 checks each chunk read
    for_each_block(file, path, prefix, tensors, by_whole(runs),
                   [&](const FlatTensor& t, const std::string& name, hid_t ds, const Block& k) {
                     read_block(ds, path, name, t, k, dst + k.buffer_offset);
                   });
    return;
  }
  for_each_verified_row(file, path, prefix, tensors, runs,
                        [&](const std::string&, const Block& b, std::size_t r, const float* values) {
                          const std::size_t nc = b.count[1] > 0 ? std::size_t(b.count[1]) : 1;
                          std::memcpy(dst + b.buffer_offset + r * nc, values, nc * sizeof(float));
                        });
}
}  // namespace

std::string diloco_residual_prefix(int site) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "/diloco/site_%02d/outer_residual", site);
  return buf;
}

std::string diloco_site_prefix(int site, const char* what) {
  if (site == 0) return std::string(what) == std::string("model") ? "/model" : std::string("/optimizer/") + what;
  char buf[64];
  std::snprintf(buf, sizeof(buf), "/diloco/site_%02d/%s", site, what);
  return buf;
}

void read_flat_section(const std::string& path, const std::string& prefix, const std::vector<FlatTensor>& tensors,
                       float* dst, std::size_t begin, std::size_t end) {
  H5 file = open_file(path);
  read_runs_open(file, path, prefix, tensors, dst, identity_runs(begin, end, begin));
}

void read_runs(const std::string& path, const std::string& prefix, const std::vector<FlatTensor>& tensors, float* dst,
               const std::vector<FlatRun>& runs) {
  H5 file = open_file(path);
  read_runs_open(file, path, prefix, tensors, dst, runs);
}

void read_checkpoint_tensors(const std::string& path, const std::vector<FlatTensor>& tensors, float* params,
                             std::size_t n, float* m, float* v, std::size_t m_begin, std::size_t m_end) {
  H5 file = open_file(path);
  for (const auto& t : tensors) require(t.offset + t.size <= n, "read_checkpoint_tensors: tensor outside the buffer");
  read_runs_open(file, path, "/model", tensors, params, identity_runs(0, n));
  if (m_end > m_begin) {
    read_runs_open(file, path, "/optimizer/adam_m", tensors, m, identity_runs(m_begin, m_end, m_begin));
    read_runs_open(file, path, "/optimizer/adam_v", tensors, v, identity_runs(m_begin, m_end, m_begin));
  }
}

std::string verify_sections(const std::string& path, const std::vector<FlatTensor>& tensors,
                            const std::vector<FlatSection>& sections) {
  try {
    H5 file = open_file(path);
    for (const auto& sec : sections)
      for_each_verified_row(file, path, sec.prefix, tensors, sec.runs,
                            [&](const std::string& name, const Block& b, std::size_t r, const float* values) {
                              const std::size_t nc = b.count[1] > 0 ? std::size_t(b.count[1]) : 1;
                              require(std::memcmp(values, sec.data + b.buffer_offset + r * nc, nc * sizeof(float)) == 0,
                                      "checkpoint '" + path + "': tensor " + name + " reads back different values");
                            });
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<TensorReport> inspect_checkpoint(const std::string& path, const std::vector<FlatTensor>& tensors) {
  H5 file = open_file(path);
  std::vector<TensorReport> out;
  Reader r{path};
  std::vector<std::string> prefixes = {"/model/", "/optimizer/adam_m/", "/optimizer/adam_v/"};
  if (H5Lexists(file, "/diloco", H5P_DEFAULT) > 0) {
    H5 dl(H5Gopen2(file, "/diloco", H5P_DEFAULT), H5Gclose);
    const int sites = int(r.i64(dl, "sites_in_file"));
    for (int s = 1; s < sites; ++s)
      for (const char* what : {"model", "adam_m", "adam_v"}) prefixes.push_back(diloco_site_prefix(s, what) + "/");
    prefixes.push_back(std::string(kOuterParams) + "/");
    prefixes.push_back(std::string(kOuterMomentum) + "/");
    if (r.has(dl, "outer_pending_step") && r.i64(dl, "outer_pending_step") >= 0)
      prefixes.push_back(std::string(kOuterPending) + "/");
    if (r.has(dl, "outer_residual") && r.i64(dl, "outer_residual") != 0)
      for (int s = 0; s < sites; ++s) prefixes.push_back(diloco_residual_prefix(s) + "/");
  }
  std::vector<std::string> names;
  for (const auto& prefix : prefixes)
    for (const auto& t : tensors) names.push_back(prefix + t.path);
  for (const auto& name : names) {
    TensorReport rep;
    rep.path = name;
    H5 ds(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) {  // missing: incomplete
      out.push_back(rep);
      continue;
    }
    H5 space(H5Dget_space(ds), H5Sclose);
    std::vector<hsize_t> d(std::size_t(std::max(0, H5Sget_simple_extent_ndims(space))));
    H5Sget_simple_extent_dims(space, d.data(), nullptr);
    rep.shape.assign(d.begin(), d.end());
    std::size_t n = 1;
    for (auto x : d) n *= std::size_t(x);
    std::vector<float> buf(n);
    const bool read_ok = H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()) >= 0;
    if (read_ok) {
      double s = 0;
      for (float x : buf) s += double(x) * double(x);
      rep.l2_norm = std::sqrt(s);
      rep.checksum = checksum(buf.data(), n);
    }
    rep.stored_checksum = r.has(ds, "checksum") ? r.u64(ds, "checksum") : 0;
    rep.ok = read_ok && r.has(ds, "checksum") && rep.checksum == rep.stored_checksum;
    out.push_back(rep);
  }
  return out;
}

}  // namespace tapestry::io
