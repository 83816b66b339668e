#pragma once
/// \file
/// \brief Hugging Face interop: a model spec as GPT2LMHeadModel, LlamaForCausalLM or
/// ApertusForCausalLM (config.json + safetensors), exported from any checkpoint one tensor at a
/// time, and read back at any layout, each rank reading only its part (docs/user-guide.md).

#include <cstdint>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "tapestry/core/config.hpp"
#include "tapestry/io/safetensors.hpp"

namespace tapestry::train {

/// \brief One Hugging Face tensor and where its values live in Tapestry's whole flat buffer: a
/// (rows, cols) row-major block at `offset`, of which HF stores the first `keep_rows` rows (the
/// vocabulary without padding), transposed for GPT-2's Conv1D. `constant` tensors (xIELU's beta
/// and eps) are not in the buffer.
struct HfTensor {
  std::string name;
  std::vector<std::int64_t> shape;  ///< as Hugging Face stores it
  std::size_t offset = 0;
  std::int64_t rows = 0, cols = 1, keep_rows = 0;
  bool transpose = false;
  bool constant = false;
  float value = 0;  ///< of a constant
};

/// "GPT2LMHeadModel", "LlamaForCausalLM" or "ApertusForCausalLM"; throws tapestry::Error naming the
/// options a spec has that none of them has.
std::string hf_architecture(const ModelConfig& m);
/// The tensors of the spec's Hugging Face model, in state-dict order.
std::vector<HfTensor> hf_tensors(const ModelConfig& m);
/// config.json of the spec (torch_dtype "float32" or "bfloat16").
std::string hf_config_json(const ModelConfig& m, const std::string& dtype);
/// The model spec of an HF config.json (gpt2, llama, apertus); padded_vocab_size as Tapestry pads.
ModelConfig model_from_hf_config(const std::string& path);

/// `tapestry ckpt export PATH --format hf -o DIR`: writes DIR/config.json and model.safetensors,
/// or shards of at most `max_shard_bytes` and model.safetensors.index.json. dtype: fp32 or bf16.
/// `tokenizer` (optional): a tokenizer.json, the folder holding it, or a SentencePiece .model,
/// copied in beside the weights (tokenizer.json with its tokenizer_config.json and
/// special_tokens_map.json where the folder has them; tokenizer.model), its BOS/EOS ids written
/// into config.json. Its ids must fit the model's vocabulary.
void ckpt_export_hf(const std::string& path, const std::string& out_dir, const std::string& dtype,
                    std::uint64_t max_shard_bytes, std::ostream& out, const std::string& tokenizer = "");

/// True for what --init-from reads as Hugging Face weights: a directory or a .safetensors file.
bool is_hf_source(const std::string& path);

/// \brief Hugging Face weights opened for reading: a directory (config.json, model.safetensors or
/// a sharded index) or one .safetensors file, checked against the spec (every tensor present with
/// its shape; one error naming the first that is not).
class HfReader {
 public:
  HfReader(const std::string& path, const ModelConfig& m);
  /// n values of the whole flat buffer from `whole_begin` (within one row of one tensor) into dst.
  void read(std::size_t whole_begin, std::size_t n, float* dst) const;

 private:
  std::string path_;
  std::vector<HfTensor> tensors_;  // by offset, constants left out
  std::map<std::string, const io::SafetensorsFile*> where_;  // tensor -> file
  std::vector<std::unique_ptr<io::SafetensorsFile>> files_;
};

}  // namespace tapestry::train
