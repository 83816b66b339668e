#include "tapestry/io/llmc_checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "tapestry/core/error.hpp"
#include "tapestry/io/token_file.hpp"

namespace tapestry::io {

namespace {
constexpr std::size_t kHeaderBytes = 256 * sizeof(std::int32_t);

void read_header(std::ifstream& f, const std::string& path, std::int32_t (&h)[256]) {
  f.read(reinterpret_cast<char*>(h), kHeaderBytes);
  require(bool(f), "checkpoint '" + path + "' is truncated: shorter than the 1024-byte header");
  require(h[0] == kLlmcMagic, "checkpoint '" + path + "' has wrong magic " + std::to_string(h[0]) +
                                  " (expected llm.c's " + std::to_string(kLlmcMagic) + ")");
  require(h[1] == kLlmcVersionFp32,
          "checkpoint '" + path + "' has version " + std::to_string(h[1]) +
              "; only llm.c's fp32 version 3 is supported (version 5 is bf16)");
}
}  // namespace

ModelConfig read_llmc_header(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  require(bool(f), "cannot open checkpoint '" + path + "'");
  std::int32_t h[256];
  read_header(f, path, h);
  ModelConfig m;
  m.max_seq_len = h[2];
  m.vocab_size = h[3];
  m.n_layer = h[4];
  m.n_head = h[5];
  m.d_model = h[6];
  m.padded_vocab_size = h[7];
  try {
    validate(m);
  } catch (const Error& e) {
    throw Error("checkpoint '" + path + "' has an impossible shape: " + e.what());
  }
  return m;
}

std::vector<float> read_llmc_params(const std::string& path, std::size_t expected) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  require(bool(f), "cannot open checkpoint '" + path + "'");
  const auto size = std::size_t(f.tellg());
  f.seekg(0);
  std::int32_t h[256];
  read_header(f, path, h);
  const std::size_t want = kHeaderBytes + expected * sizeof(float);
  require(size == want, "checkpoint '" + path + "' is " + std::to_string(size) +
                            " bytes; its shape needs " + std::to_string(want));
  std::vector<float> p(expected);
  f.read(reinterpret_cast<char*>(p.data()), std::streamsize(expected * sizeof(float)));
  require(bool(f), "checkpoint '" + path + "': read failed");
  return p;
}

namespace {
std::array<std::int32_t, 256> header(const ModelConfig& m) {
  require(m.is_gpt2(), "llm.c checkpoints hold GPT-2 only; this model spec is not GPT-2 (norm " + m.norm + ", mlp " +
                           m.mlp + ", positions " + m.positions + ")");
  std::array<std::int32_t, 256> h{};
  h[0] = kLlmcMagic;
  h[1] = kLlmcVersionFp32;
  h[2] = m.max_seq_len;
  h[3] = m.vocab_size;
  h[4] = m.n_layer;
  h[5] = m.n_head;
  h[6] = m.d_model;
  h[7] = m.vocab_padded();
  return h;
}
}  // namespace

void write_llmc_checkpoint(const std::string& path, const ModelConfig& m,
                           const std::vector<float>& params) {
  require(params.size() == std::size_t(m.num_parameters()),
          "write_llmc_checkpoint: parameter count does not match the shape");
  const auto h = header(m);
  std::string bytes(kHeaderBytes + params.size() * sizeof(float), '\0');
  std::memcpy(bytes.data(), h.data(), kHeaderBytes);
  std::memcpy(bytes.data() + kHeaderBytes, params.data(), params.size() * sizeof(float));
  write_file_atomic(path, bytes);
}

void write_llmc_checkpoint(const std::string& path, MPI_Comm comm, const ModelConfig& m, const float* data,
                           const std::vector<FlatRun>& runs) {
  const auto h = header(m);
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  const std::string tmp = path + ".tmp";
  // Every rank opens it itself first: one rank that cannot must not leave the others inside the
  // collective MPI_File_open.
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT, 0644);
  int writable = fd >= 0 ? 1 : 0;
  if (fd >= 0) ::close(fd);
  MPI_Allreduce(MPI_IN_PLACE, &writable, 1, MPI_INT, MPI_MIN, comm);
  require(writable == 1, "cannot write '" + tmp + "'" + (fd >= 0 ? " on another rank" : ""));
  MPI_File f;
  int rc = MPI_File_open(comm, tmp.c_str(), MPI_MODE_CREATE | MPI_MODE_WRONLY, MPI_INFO_NULL, &f);
  require(rc == MPI_SUCCESS, "cannot write '" + tmp + "'");
  auto write_at = [&](std::size_t offset, const void* p, std::size_t bytes) {
    constexpr std::size_t kMax = std::size_t(1) << 30;  // MPI counts are int
    for (std::size_t done = 0; done < bytes && rc == MPI_SUCCESS; done += kMax) {
      const int n = int(std::min(kMax, bytes - done));
      MPI_Status status;
      rc = MPI_File_write_at(f, MPI_Offset(offset + done), static_cast<const char*>(p) + done, n, MPI_BYTE, &status);
      // Open MPI 4.1's OMPIO returns MPI_SUCCESS when the file system refuses the write (ENOSPC):
      // only the count written tells.
      int written = 0;
      if (rc == MPI_SUCCESS && (MPI_Get_count(&status, MPI_BYTE, &written) != MPI_SUCCESS || written != n)) rc = MPI_ERR_IO;
    }
  };
  // Exactly the file's size, whatever an earlier `.tmp` left there.
  rc = MPI_File_set_size(f, MPI_Offset(kHeaderBytes + std::size_t(m.num_parameters()) * sizeof(float)));
  if (rank == 0) write_at(0, h.data(), kHeaderBytes);
  for (const auto& r : runs) write_at(kHeaderBytes + r.whole * sizeof(float), data + r.local, r.n * sizeof(float));
  const int synced = MPI_File_sync(f);  // collective: every rank calls it, whatever failed before
  if (rc == MPI_SUCCESS) rc = synced;
  MPI_File_close(&f);
  int size = 1;
  MPI_Comm_size(comm, &size);
  int first_failed = rc == MPI_SUCCESS ? size : rank;  // size: none failed
  MPI_Allreduce(MPI_IN_PLACE, &first_failed, 1, MPI_INT, MPI_MIN, comm);
  const bool ok = first_failed == size;
  if (!ok && rank == 0) std::remove(tmp.c_str());  // nothing half-written is left behind
  require(ok, "writing '" + tmp + "' failed on rank " + std::to_string(first_failed) + " (disk full?)");
  if (rank == 0) {
    require(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '" + tmp + "' to '" + path + "'");
    sync_parent_dir(path);
  }
}

}  // namespace tapestry::io
