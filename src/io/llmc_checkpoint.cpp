#include "tapestry/io/llmc_checkpoint.hpp"

#include <cstdint>
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

void write_llmc_checkpoint(const std::string& path, const ModelConfig& m,
                           const std::vector<float>& params) {
  require(m.is_gpt2(), "llm.c checkpoints hold GPT-2 only; this model spec is not GPT-2 (norm " + m.norm + ", mlp " +
                           m.mlp + ", positions " + m.positions + ")");
  require(params.size() == std::size_t(m.num_parameters()),
          "write_llmc_checkpoint: parameter count does not match the shape");
  std::int32_t h[256] = {};
  h[0] = kLlmcMagic;
  h[1] = kLlmcVersionFp32;
  h[2] = m.max_seq_len;
  h[3] = m.vocab_size;
  h[4] = m.n_layer;
  h[5] = m.n_head;
  h[6] = m.d_model;
  h[7] = m.vocab_padded();
  std::string bytes(kHeaderBytes + params.size() * sizeof(float), '\0');
  std::memcpy(bytes.data(), h, kHeaderBytes);
  std::memcpy(bytes.data() + kHeaderBytes, params.data(), params.size() * sizeof(float));
  write_file_atomic(path, bytes);
}

}  // namespace tapestry::io
