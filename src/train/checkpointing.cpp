#include "tapestry/train/checkpointing.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <regex>
#include <utility>

#include "tapestry/core/error.hpp"
#include "tapestry/io/llmc_checkpoint.hpp"
#include "tapestry/kernels/blas.hpp"
#include "tapestry/train/hf.hpp"
#include "tapestry/io/token_dataset.hpp"
#include "tapestry/io/token_file.hpp"
#include "tapestry/model/gpt.hpp"
#include "tapestry/parallel/comm.hpp"

namespace fs = std::filesystem;

namespace tapestry::train {

namespace {
/// Format version 1 (GPT-2 only): llm.c's tensors under /model/blocks/NN/... names.
std::vector<io::FlatTensor> checkpoint_tensors_v1(const ModelConfig& m) {
  // llm.c name -> (where inside a block or the model, what it is)
  static const std::vector<std::pair<std::string, std::string>> names = {
      {"wte", "embedding/token/weight"},   {"wpe", "embedding/position/weight"},
      {"ln1w", "ln1/weight"},              {"ln1b", "ln1/bias"},
      {"qkvw", "attn/qkv/weight"},         {"qkvb", "attn/qkv/bias"},
      {"attprojw", "attn/proj/weight"},    {"attprojb", "attn/proj/bias"},
      {"ln2w", "ln2/weight"},              {"ln2b", "ln2/bias"},
      {"fcw", "mlp/fc/weight"},            {"fcb", "mlp/fc/bias"},
      {"fcprojw", "mlp/proj/weight"},      {"fcprojb", "mlp/proj/bias"},
      {"lnfw", "final_ln/weight"},         {"lnfb", "final_ln/bias"}};
  require(m.is_gpt2(), "checkpoint format version 1 holds GPT-2 models only");
  std::vector<io::FlatTensor> out;
  for (const auto& t : model::param_layout(m)) {
    std::string where;
    for (const auto& [k, v] : names)
      if (k == t.name) where = v;
    if (!t.per_layer) {
      out.push_back({where, t.shape, t.offset, t.size, t.name});
      continue;
    }
    const std::vector<std::int64_t> shape(t.shape.begin() + 1, t.shape.end());
    const std::size_t per = t.size / std::size_t(m.n_layer);
    for (int l = 0; l < m.n_layer; ++l) {
      char block[32];
      std::snprintf(block, sizeof(block), "blocks/%02d/", l);
      out.push_back({block + where, shape, t.offset + std::size_t(l) * per, per, t.name + "[" + std::to_string(l) + "]"});
    }
  }
  return out;
}
}  // namespace

std::vector<io::FlatTensor> checkpoint_tensors(const ModelConfig& m, int format_version) {
  if (format_version == 1) return checkpoint_tensors_v1(m);
  // Every named part of every tensor (per layer): q, k and v of the fused projection, gate and up.
  std::vector<io::FlatTensor> out;
  for (const auto& t : model::param_layout(m)) {
    const std::size_t cols = t.cols(), per = t.layer_size();
    for (std::size_t l = 0; l < t.layers(); ++l) {
      char layer[32];
      std::snprintf(layer, sizeof(layer), "layers/%02d/", int(l));
      for (const auto& part : t.parts) {
        std::vector<std::int64_t> shape = {part.rows};
        if (t.matrix()) shape.push_back(std::int64_t(cols));
        const std::string llmc = t.name + (t.per_layer ? "[" + std::to_string(l) + "]" : "") +
                                 (t.parts.size() > 1 ? " rows " + std::to_string(part.row0) + "+" + std::to_string(part.rows) : "");
        out.push_back({(t.per_layer ? std::string(layer) : std::string()) + part.path, shape,
                       t.offset + l * per + std::size_t(part.row0) * cols, std::size_t(part.rows) * cols, llmc});
      }
    }
  }
  return out;
}

CheckpointManager::CheckpointManager(std::string dir, int keep, MPI_Comm comm)
    : dir_(std::move(dir)), keep_(keep), comm_(comm) {}

std::string checkpoint_name(std::int64_t step) {
  char name[64];
  std::snprintf(name, sizeof(name), "step_%08lld.h5", static_cast<long long>(step));
  return name;
}

std::string SaveTimes::str() const {
  char b[96];
  std::snprintf(b, sizeof(b), "write %.2f s, verify %.2f s, publish %.2f s", write, verify, publish);
  return b;
}

std::string CheckpointManager::save(const io::CheckpointState& state, const std::vector<io::FlatTensor>& tensors,
                                    const std::vector<io::FlatSection>& sections, SaveTimes* times) {
  SaveTimes t;
  auto t0 = std::chrono::steady_clock::now();
  const auto lap = [&t0] {
    const auto now = std::chrono::steady_clock::now();
    return std::chrono::duration<double>(now - std::exchange(t0, now)).count();
  };
  const auto comm = parallel::Comm::view(comm_);
  const std::string name = checkpoint_name(state.step);
  const fs::path final_path = fs::path(dir_) / name, tmp = fs::path(dir_) / (std::string(name) + ".tmp");
  parallel::agree(comm, [&] {
    if (comm.rank() != 0) return;
    std::error_code ec;
    fs::create_directories(dir_, ec);
    require(!ec, "cannot create checkpoint directory '" + dir_ + "': " + ec.message());
  });
  // Every rank opens the file for writing itself first: a disk that is full or read-only on one
  // node only would otherwise leave the other ranks waiting in the collective open that follows.
  parallel::agree(comm, [&] {
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT, 0644);
    require(fd >= 0, "cannot write checkpoint file '" + tmp.string() + "' on rank " + std::to_string(comm.rank()) +
                         ": " + std::strerror(errno));
    ::close(fd);
  });
  io::write_checkpoint(tmp.string(), comm_, state, tensors, sections);
  MPI_Barrier(comm_);  // every rank's data has reached the file
  t.write = lap();
  // Verify, distributed: every rank reads back what it wrote; rank 0 checks the attributes.
  parallel::agree(comm, [&] {
    std::string failure = io::verify_sections(tmp.string(), tensors, sections);
    if (failure.empty() && comm.rank() == 0) {
      try {
        io::read_checkpoint_state(tmp.string());
      } catch (const Error& e) {
        failure = e.what();
      }
    }
    require(failure.empty(), failure + (comm.size() > 1 ? " (verified on rank " + std::to_string(comm.rank()) + ")" : ""));
  });
  t.verify = lap();
  // Publish on rank 0: durable before it is published - the file's bytes, then its name, then
  // `latest` (each fsync'ed; write_file_atomic flushes `latest` and the directory).
  parallel::agree(comm, [&] {
    if (comm.rank() != 0) return;
    try {
      io::sync_file(tmp.string());
      fs::rename(tmp, final_path);
      io::sync_parent_dir(final_path.string());
      io::write_file_atomic((fs::path(dir_) / "latest").string(), name + "\n");
      // Keep the newest `keep`; drop temporaries of writes that were cut short earlier.
      std::vector<fs::path> all;
      for (const auto& e : fs::directory_iterator(dir_)) {
        const std::string f = e.path().filename().string();
        if (std::regex_match(f, std::regex("step_[0-9]{8}\\.h5"))) all.push_back(e.path());
        if (std::regex_match(f, std::regex("step_[0-9]{8}\\.h5\\.tmp"))) fs::remove(e.path());
      }
      std::sort(all.begin(), all.end());
      for (std::size_t i = 0; keep_ > 0 && i + std::size_t(keep_) < all.size(); ++i) fs::remove(all[i]);
    } catch (const fs::filesystem_error& e) {
      throw Error(std::string("publishing checkpoint '") + final_path.string() + "' failed: " + e.what());
    }
  });
  t.publish = lap();
  if (times != nullptr) *times = t;
  return final_path.string();
}

std::string resolve_resume(const std::string& resume, const std::string& dir) {
  if (resume.empty()) return "";
  if (resume != "auto") return resume;
  const fs::path latest = fs::path(dir) / "latest";
  std::ifstream f(latest);
  if (!f) return "";
  std::string name;
  std::getline(f, name);
  require(!name.empty(), "'" + latest.string() + "' is empty");
  return (fs::path(dir) / name).string();
}

namespace {
volatile std::sig_atomic_t g_stop = 0;  // written only by the signal handler
extern "C" void on_stop_signal(int) { g_stop = 1; }
}  // namespace

void install_stop_signals() {
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGUSR1, on_stop_signal);
  std::signal(SIGUSR2, on_stop_signal);
}

bool stop_requested() { return g_stop != 0; }

namespace {
std::string human_bytes(double b) {
  const char* u[] = {"B", "KiB", "MiB", "GiB"};
  int i = 0;
  while (b >= 1024 && i < 3) b /= 1024, ++i;
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f %s", b, u[i]);
  return buf;
}
}  // namespace

void ckpt_info(const std::string& path, std::ostream& out) {
  const auto st = io::read_checkpoint_state(path);
  const auto& m = st.model;
  out << path << ": Tapestry checkpoint, format " << st.format_version << ", written by tapestry "
      << st.program_version << "\n"
      << "  step " << st.step << " of " << st.total_steps << ", " << st.tokens_seen << " tokens seen, "
      << std::fixed << std::setprecision(1) << st.wall_time_s << " s of training\n" << std::defaultfloat
      << std::setprecision(6)
      << "  model: " << (m.is_gpt2() ? "GPT-2 " : "") << spec_string(m) << ", " << m.num_parameters()
      << " parameters\n"
      << "  saved on layout tp=" << st.tp << " pp=" << st.pp << " dp=" << st.dp << " zero=" << st.zero << "\n"
      << "  optimizer: AdamW t=" << st.adam_t << " lr=" << st.optim.lr << " betas=(" << st.optim.beta1 << ", "
      << st.optim.beta2 << ") eps=" << st.optim.eps << " weight_decay=" << st.optim.weight_decay << "\n"
      << "  data: " << st.train_data << " file " << st.loader_file << " offset " << st.loader_offset << " epoch "
      << st.loader_epoch << " (B=" << st.batch_size << " T=" << st.seq_len << " global batch " << st.global_batch
      << ")\n";
  out << "  " << std::left << std::setw(44) << "tensor" << std::setw(16) << "shape" << std::setw(12) << "size"
      << "L2 norm\n";
  auto reports = io::inspect_checkpoint(path, checkpoint_tensors(m, st.format_version));
  std::stable_sort(reports.begin(), reports.end(), [](const auto& a, const auto& b) { return a.path < b.path; });
  for (const auto& r : reports) {
    std::string shape = "(";
    std::size_t n = 1;
    for (std::size_t i = 0; i < r.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(r.shape[i]), n *= std::size_t(r.shape[i]);
    shape += ")";
    out << "  " << std::setw(44) << r.path << std::setw(16) << shape << std::setw(12) << human_bytes(4.0 * double(n))
        << std::setprecision(6) << std::defaultfloat << r.l2_norm << (r.ok ? "" : "  CORRUPTED") << "\n";
  }
}

void ckpt_verify(const std::string& path, std::ostream& out) {
  const auto st = io::read_checkpoint_state(path);
  const auto reports = io::inspect_checkpoint(path, checkpoint_tensors(st.model, st.format_version));
  std::size_t bad = 0;
  std::string first;
  for (const auto& r : reports)
    if (!r.ok) {
      if (first.empty()) first = r.path;
      ++bad;
    }
  require(bad == 0, "checkpoint '" + path + "': " + std::to_string(bad) + " of " + std::to_string(reports.size()) +
                        " tensors failed verification (first: " + first + ")");
  out << path << ": OK (complete, " << reports.size() << " tensors, all checksums match, step " << st.step << ")\n";
}

void ckpt_export_llmc(const std::string& path, const std::string& out_path, std::ostream& out) {
  const auto st = io::read_checkpoint_state(path);
  const auto tensors = checkpoint_tensors(st.model, st.format_version);
  const std::size_t n = std::size_t(st.model.num_parameters());
  std::vector<float> params(n);
  io::read_checkpoint_tensors(path, tensors, params.data(), n, nullptr, nullptr, 0, 0);
  io::write_llmc_checkpoint(out_path, st.model, params);
  out << "wrote llm.c checkpoint " << out_path << " (" << n << " parameters, step " << st.step << ")\n";
}

void ckpt_eval(const std::string& path, const EvalConfig& cfg, std::ostream& out) {
  const bool hf = fs::is_directory(path);  // a Hugging Face model directory
  io::CheckpointState st;
  if (hf) st.model = model_from_hf_config((fs::path(path) / "config.json").string());
  else st = io::read_checkpoint_state(path);
  const auto& m = st.model;
  require(cfg.seq_len >= 1 && cfg.seq_len <= m.max_seq_len && cfg.rows >= 1,
          "ckpt eval: needs 1 <= seq-len <= max_seq_len (" + std::to_string(m.max_seq_len) + ") and rows >= 1");
  const auto data = io::TokenDataset::open(cfg.data);  // any format; only the rows read are touched
  const std::size_t T = std::size_t(cfg.seq_len), need = std::size_t(cfg.rows) * T + 1;
  require(data->num_tokens() >= need, "ckpt eval: '" + cfg.data + "' has " + std::to_string(data->num_tokens()) +
                                     " tokens; " + std::to_string(cfg.rows) + " rows of " + std::to_string(T) +
                                     " need " + std::to_string(need));
  model::GPT gpt(m, 1, cfg.seq_len);
  if (hf) {
    const HfReader reader(path, m);
    gpt.load_params_from([&](std::size_t w, std::size_t n, float* dst) { reader.read(w, n, dst); });
  } else {
    std::vector<float> params(gpt.whole_num_params());
    io::read_checkpoint_tensors(path, checkpoint_tensors(m, st.format_version), params.data(), params.size(), nullptr,
                                nullptr, 0, 0);
    gpt.load_params(params);
  }
  kernels::Blas blas;
  std::ofstream logits;
  if (!cfg.logits_out.empty()) {
    logits.open(cfg.logits_out, std::ios::binary);
    require(bool(logits), "ckpt eval: cannot write '" + cfg.logits_out + "'");
  }
  double sum = 0;
  std::vector<int> in(T), tg(T);
  std::vector<std::uint32_t> row(T + 1);
  for (int r = 0; r < cfg.rows; ++r) {
    data->read(std::uint64_t(r) * T, T + 1, row.data());
    for (std::size_t t = 0; t < T; ++t) {
      require(row[t + 1] < std::uint32_t(m.vocab_size) && row[t] < std::uint32_t(m.vocab_size),
              "ckpt eval: '" + cfg.data + "' holds token id " + std::to_string(std::max(row[t], row[t + 1])) +
                  " >= the model's vocab_size " + std::to_string(m.vocab_size));
      in[t] = int(row[t]);
      tg[t] = int(row[t + 1]);
    }
    sum += gpt.forward(blas, in, tg);
    if (logits.is_open()) {
      const auto l = gpt.logits(blas);
      logits.write(reinterpret_cast<const char*>(l.data()), std::streamsize(l.size() * sizeof(float)));
    }
  }
  require(!logits.is_open() || bool(logits.flush()), "ckpt eval: writing '" + cfg.logits_out + "' failed");
  char line[256];
  std::snprintf(line, sizeof(line), "{\"loss\": %.9g, \"rows\": %d, \"seq_len\": %d, \"vocab_size\": %d, \"step\": %lld}\n",
                sum / cfg.rows, cfg.rows, cfg.seq_len, m.vocab_size, static_cast<long long>(st.step));
  out << line;
}

}  // namespace tapestry::train
