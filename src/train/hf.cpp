#include "tapestry/train/hf.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tapestry/core/error.hpp"
#include "tapestry/io/checkpoint.hpp"
#include "tapestry/io/tokenizer.hpp"
#include "tapestry/kernels/bf16.hpp"
#include "tapestry/model/gpt.hpp"
#include "tapestry/train/checkpointing.hpp"

namespace fs = std::filesystem;

namespace tapestry::train {

namespace {
using json = nlohmann::json;

constexpr const char* kGpt2 = "GPT2LMHeadModel";
constexpr const char* kLlama = "LlamaForCausalLM";
constexpr const char* kApertus = "ApertusForCausalLM";

/// Tapestry's part path -> the Hugging Face name (inside a layer: after model.layers.N. or
/// transformer.h.N.). GPT-2's fused q | k | v is handled apart.
std::string hf_name(const std::string& arch, const std::string& part) {
  static const std::map<std::string, std::string> llama = {
      {"embedding/token/weight", "model.embed_tokens.weight"},
      {"attn_norm/weight", "input_layernorm.weight"},
      {"attn/q/weight", "self_attn.q_proj.weight"},        {"attn/k/weight", "self_attn.k_proj.weight"},
      {"attn/v/weight", "self_attn.v_proj.weight"},        {"attn/o/weight", "self_attn.o_proj.weight"},
      {"attn/q/bias", "self_attn.q_proj.bias"},            {"attn/k/bias", "self_attn.k_proj.bias"},
      {"attn/v/bias", "self_attn.v_proj.bias"},            {"attn/o/bias", "self_attn.o_proj.bias"},
      {"attn/q_norm/weight", "self_attn.q_norm.weight"},   {"attn/k_norm/weight", "self_attn.k_norm.weight"},
      {"mlp_norm/weight", "post_attention_layernorm.weight"},
      {"mlp/gate/weight", "mlp.gate_proj.weight"},         {"mlp/up/weight", "mlp.up_proj.weight"},
      {"mlp/down/weight", "mlp.down_proj.weight"},         {"mlp/gate/bias", "mlp.gate_proj.bias"},
      {"mlp/up/bias", "mlp.up_proj.bias"},                 {"mlp/down/bias", "mlp.down_proj.bias"},
      {"mlp/act/alpha_p", "mlp.act_fn.alpha_p"},           {"mlp/act/alpha_n", "mlp.act_fn.alpha_n"},
      {"final_norm/weight", "model.norm.weight"},          {"lm_head/weight", "lm_head.weight"}};
  static const std::map<std::string, std::string> gpt2 = {
      {"embedding/token/weight", "transformer.wte.weight"}, {"embedding/position/weight", "transformer.wpe.weight"},
      {"attn_norm/weight", "ln_1.weight"},                  {"attn_norm/bias", "ln_1.bias"},
      {"attn/o/weight", "attn.c_proj.weight"},              {"attn/o/bias", "attn.c_proj.bias"},
      {"mlp_norm/weight", "ln_2.weight"},                   {"mlp_norm/bias", "ln_2.bias"},
      {"mlp/up/weight", "mlp.c_fc.weight"},                 {"mlp/up/bias", "mlp.c_fc.bias"},
      {"mlp/down/weight", "mlp.c_proj.weight"},             {"mlp/down/bias", "mlp.c_proj.bias"},
      {"final_norm/weight", "transformer.ln_f.weight"},     {"final_norm/bias", "transformer.ln_f.bias"}};
  if (arch == kApertus && part == "attn_norm/weight") return "attention_layernorm.weight";
  if (arch == kApertus && part == "mlp_norm/weight") return "feedforward_layernorm.weight";
  const auto& table = arch == kGpt2 ? gpt2 : llama;
  const auto it = table.find(part);
  require(it != table.end(), "no Hugging Face name for tensor '" + part + "' in " + arch);
  return it->second;
}

std::string shape_str(const std::vector<std::int64_t>& s) {
  std::string r = "[";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}
}  // namespace

std::string hf_architecture(const ModelConfig& m) {
  if (m.is_gpt2()) return kGpt2;
  const bool base = m.norm == "rmsnorm" && m.positions == "rope";
  if (base && m.mlp == "swiglu" && !m.qk_norm) return kLlama;
  if (base && m.mlp == "xielu" && m.qk_norm && !m.bias) return kApertus;
  throw Error("this model spec has no Hugging Face architecture (norm " + m.norm + ", positions " + m.positions +
              ", mlp " + m.mlp + ", qk-norm " + (m.qk_norm ? "true" : "false") + ", bias " + (m.bias ? "true" : "false") +
              "): GPT2LMHeadModel is GPT-2's block, LlamaForCausalLM rmsnorm + rope + swiglu without qk-norm, "
              "ApertusForCausalLM rmsnorm + rope + xielu + qk-norm without biases");
}

std::vector<HfTensor> hf_tensors(const ModelConfig& m) {
  const std::string arch = hf_architecture(m);
  const bool gpt2 = arch == kGpt2;
  std::vector<std::pair<int, HfTensor>> out;  // (layer for the order: -1 embeddings, L the head)
  for (const auto& t : model::param_layout(m)) {
    const std::int64_t cols = std::int64_t(t.cols());
    const std::size_t per = t.layer_size();
    for (std::size_t l = 0; l < t.layers(); ++l) {
      const std::string prefix = !t.per_layer ? "" : (gpt2 ? "transformer.h." : "model.layers.") + std::to_string(l) + ".";
      const int order = t.per_layer ? int(l) : (t.parts[0].path.rfind("embedding", 0) == 0 ? -1 : m.n_layer);
      const std::size_t base = t.offset + l * per;
      if (gpt2 && (t.name == "qkvw" || t.name == "qkvb")) {  // Conv1D: the fused q | k | v, [in, out]
        HfTensor h;
        h.rows = std::int64_t(per) / cols, h.cols = cols, h.keep_rows = h.rows, h.offset = base;
        h.transpose = cols > 1;
        h.name = prefix + (cols > 1 ? "attn.c_attn.weight" : "attn.c_attn.bias");
        h.shape = cols > 1 ? std::vector<std::int64_t>{cols, h.rows} : std::vector<std::int64_t>{h.rows};
        out.emplace_back(order, h);
        continue;
      }
      for (const auto& part : t.parts) {
        HfTensor h;
        h.name = prefix + hf_name(arch, part.path);
        h.rows = part.rows, h.cols = cols, h.offset = base + std::size_t(part.row0 * cols);
        h.keep_rows = t.vocab_rows ? m.vocab_size : part.rows;
        h.transpose = gpt2 && t.per_layer && cols > 1;  // Conv1D: the blocks' weights
        if (h.transpose) h.shape = {cols, h.rows};
        else if (cols > 1) h.shape = {h.keep_rows, cols};
        else h.shape = {h.keep_rows};
        out.emplace_back(order, h);
      }
      if (t.name == "xielu") {  // transformers' XIELUActivation buffers: fixed in Tapestry
        for (const auto& [n, v] : {std::pair{"mlp.act_fn.beta", 0.5f}, std::pair{"mlp.act_fn.eps", -1e-6f}}) {
          HfTensor c;
          c.name = prefix + n, c.constant = true, c.value = v, c.rows = c.keep_rows = 1;
          out.emplace_back(order, c);
        }
      }
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<HfTensor> r;
  for (auto& [o, h] : out) r.push_back(std::move(h));
  return r;
}

std::string hf_config_json(const ModelConfig& m, const std::string& dtype) {
  const std::string arch = hf_architecture(m);
  json c;
  c["architectures"] = {arch};
  c["torch_dtype"] = dtype == "bf16" ? "bfloat16" : "float32";
  c["vocab_size"] = m.vocab_size;
  c["tapestry_spec"] = spec_string(m);
  if (arch == kGpt2) {
    c["model_type"] = "gpt2";
    c["n_layer"] = m.n_layer, c["n_head"] = m.n_head, c["n_embd"] = m.d_model;
    c["n_positions"] = m.max_seq_len, c["n_ctx"] = m.max_seq_len, c["n_inner"] = nullptr;
    c["activation_function"] = "gelu_new", c["layer_norm_epsilon"] = m.norm_eps;
    c["tie_word_embeddings"] = true;
    return c.dump(2) + "\n";
  }
  c["model_type"] = arch == kApertus ? "apertus" : "llama";
  c["hidden_size"] = m.d_model, c["intermediate_size"] = m.ffn(), c["num_hidden_layers"] = m.n_layer;
  c["num_attention_heads"] = m.n_head, c["num_key_value_heads"] = m.kv_heads(), c["head_dim"] = m.head_dim();
  c["hidden_act"] = arch == kApertus ? "xielu" : "silu";
  c["max_position_embeddings"] = m.max_seq_len, c["rms_norm_eps"] = m.norm_eps, c["rope_theta"] = m.rope_theta;
  if (m.rope_scaling == "llama3")
    c["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", m.rope_factor},
                         {"low_freq_factor", m.rope_low_freq_factor},
                         {"high_freq_factor", m.rope_high_freq_factor},
                         {"original_max_position_embeddings", m.rope_original_context}};
  else
    c["rope_scaling"] = nullptr;
  c["tie_word_embeddings"] = m.tie_embeddings;
  c["attention_bias"] = m.bias, c["mlp_bias"] = m.bias;
  if (arch == kApertus) c["qk_norm"] = true, c["post_norm"] = false;
  c["initializer_range"] = 0.02;
  return c.dump(2) + "\n";
}

ModelConfig model_from_hf_config(const std::string& path) {
  std::ifstream f(path);
  require(bool(f), "cannot open Hugging Face config '" + path + "'");
  json c;
  try {
    c = json::parse(f);
  } catch (const json::exception& e) {
    throw Error("Hugging Face config '" + path + "' is not valid JSON (" + e.what() + ")");
  }
  ModelConfig m;
  try {
    const std::string type = c.value("model_type", "");
    if (type == "gpt2") {
      m.n_layer = c.at("n_layer"), m.n_head = c.at("n_head"), m.d_model = c.at("n_embd");
      m.max_seq_len = c.at("n_positions"), m.vocab_size = c.at("vocab_size");
      m.norm_eps = c.value("layer_norm_epsilon", 1e-5);
      require(c.value("n_inner", json()).is_null() || c.at("n_inner").get<int>() == 4 * m.d_model,
              "Hugging Face config '" + path + "': n_inner other than 4 x n_embd is not GPT-2's block");
    } else if (type == "llama" || type == "apertus") {
      m.arch = "llama", m.norm = "rmsnorm", m.positions = "rope";
      m.n_layer = c.at("num_hidden_layers"), m.n_head = c.at("num_attention_heads"), m.d_model = c.at("hidden_size");
      m.n_kv_head = c.value("num_key_value_heads", m.n_head), m.ffn_dim = c.at("intermediate_size");
      m.max_seq_len = c.at("max_position_embeddings"), m.vocab_size = c.at("vocab_size");
      m.norm_eps = c.value("rms_norm_eps", 1e-6), m.rope_theta = c.value("rope_theta", 10000.0);
      m.tie_embeddings = c.value("tie_word_embeddings", false);
      const bool ab = c.value("attention_bias", false), mb = c.value("mlp_bias", false);
      require(ab == mb, "Hugging Face config '" + path + "': attention_bias and mlp_bias differ; Tapestry's "
                        "'bias' covers both");
      m.bias = ab;
      if (c.contains("head_dim") && !c.at("head_dim").is_null())
        require(c.at("head_dim").get<int>() * m.n_head == m.d_model,
                "Hugging Face config '" + path + "': head_dim x num_attention_heads != hidden_size is not supported");
      if (c.contains("rope_scaling") && !c.at("rope_scaling").is_null()) {
        const auto& s = c.at("rope_scaling");
        const std::string kind = s.value("rope_type", s.value("type", ""));
        require(kind == "llama3", "Hugging Face config '" + path + "': rope_scaling '" + kind +
                                      "' is not supported (llama3 or none)");
        m.rope_scaling = "llama3", m.rope_factor = s.at("factor"), m.rope_low_freq_factor = s.at("low_freq_factor");
        m.rope_high_freq_factor = s.at("high_freq_factor");
        m.rope_original_context = s.at("original_max_position_embeddings");
      }
      const std::string act = c.value("hidden_act", type == "apertus" ? "xielu" : "silu");
      if (type == "apertus") {
        require(act == "xielu", "Hugging Face config '" + path + "': Apertus with hidden_act '" + act + "'");
        m.mlp = "xielu", m.qk_norm = c.value("qk_norm", true);
      } else {
        require(act == "silu", "Hugging Face config '" + path + "': Llama with hidden_act '" + act +
                                   "' (Tapestry's Llama block is SwiGLU: silu)");
        m.mlp = "swiglu";
      }
    } else {
      throw Error("Hugging Face config '" + path + "': model_type '" + type + "' is not supported (gpt2, llama, apertus)");
    }
  } catch (const json::exception& e) {
    throw Error("Hugging Face config '" + path + "': " + e.what());
  }
  try {
    validate(m);
  } catch (const Error& e) {
    throw Error("Hugging Face config '" + path + "': " + e.what());
  }
  return m;
}

void ckpt_export_hf(const std::string& path, const std::string& out_dir, const std::string& dtype,
                    std::uint64_t max_shard_bytes, std::ostream& out, const std::string& tokenizer) {
  require(dtype == "fp32" || dtype == "bf16", "ckpt export: --dtype must be fp32 or bf16 (got '" + dtype + "')");
  require(max_shard_bytes > 0, "ckpt export: --max-shard-size must be > 0");
  const auto st = io::read_checkpoint_state(path);
  const auto& m = st.model;
  // The tokenizer's files, checked before anything is written.
  std::vector<std::pair<fs::path, std::string>> tok_files;  // source, name in the output
  std::int64_t bos = -1, eos = -1;
  if (!tokenizer.empty()) {
    const auto tok = io::load_tokenizer(tokenizer);
    require(tok->vocab_size() <= std::uint32_t(m.vocab_size),
            "ckpt export: the tokenizer '" + tokenizer + "' has " + std::to_string(tok->vocab_size()) +
                " ids but the model's vocabulary is " + std::to_string(m.vocab_size));
    bos = tok->bos_id(), eos = tok->eos_id();
    const fs::path t(tokenizer);
    if (fs::is_directory(t)) {
      for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"})
        if (fs::exists(t / f)) tok_files.push_back({t / f, f});
    } else {
      tok_files.push_back({t, t.extension() == ".model" ? "tokenizer.model" : "tokenizer.json"});
    }
  }
  const auto tensors = checkpoint_tensors(m, st.format_version);
  const auto hf = hf_tensors(m);
  std::error_code ec;
  require(!fs::exists(out_dir) || (fs::is_directory(out_dir) && fs::is_empty(out_dir)),
          "ckpt export: '" + out_dir + "' exists and is not an empty directory");
  const fs::path tmp = out_dir + ".tmp";
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  require(!ec, "ckpt export: cannot create '" + tmp.string() + "': " + ec.message());
  const int es = dtype == "bf16" ? 2 : 4;
  const std::string st_dtype = dtype == "bf16" ? "BF16" : "F32";
  // Shards in order, each at most max_shard_bytes (a larger tensor gets a shard of its own).
  std::vector<std::vector<const HfTensor*>> shards(1);
  std::uint64_t in_shard = 0, total = 0;
  for (const auto& h : hf) {
    std::uint64_t n = 1;
    for (auto d : h.shape) n *= std::uint64_t(d);
    const std::uint64_t bytes = n * std::uint64_t(es);
    if (!shards.back().empty() && in_shard + bytes > max_shard_bytes) shards.emplace_back(), in_shard = 0;
    shards.back().push_back(&h);
    in_shard += bytes, total += bytes;
  }
  const std::size_t S = shards.size();
  auto shard_name = [&](std::size_t s) {
    if (S == 1) return std::string("model.safetensors");
    char b[64];
    std::snprintf(b, sizeof(b), "model-%05zu-of-%05zu.safetensors", s + 1, S);
    return std::string(b);
  };
  json weight_map = json::object();
  std::vector<float> block, vals;
  std::vector<std::uint16_t> half;
  for (std::size_t s = 0; s < S; ++s) {
    std::vector<io::StTensor> decl;
    for (const auto* h : shards[s]) decl.push_back({h->name, st_dtype, h->shape, 0, 0});
    io::SafetensorsWriter w((tmp / shard_name(s)).string(), decl, {{"format", "pt"}, {"producer", "tapestry"}});
    for (const auto* h : shards[s]) {
      weight_map[h->name] = shard_name(s);
      if (h->constant) {
        vals.assign(1, h->value);
      } else {  // one tensor at a time: its rows from the checkpoint, then HF's layout
        block.resize(std::size_t(h->rows * h->cols));
        io::read_flat_section(path, "/model", tensors, block.data(), h->offset, h->offset + block.size());
        const std::size_t R = std::size_t(h->keep_rows), C = std::size_t(h->cols);
        vals.resize(R * C);
        for (std::size_t r = 0; r < R; ++r)
          for (std::size_t c = 0; c < C; ++c) vals[h->transpose ? c * R + r : r * C + c] = block[r * C + c];
      }
      if (es == 2) {
        half.resize(vals.size());
        for (std::size_t i = 0; i < vals.size(); ++i) half[i] = kernels::to_bf16(vals[i]);
        w.write(h->name, half.data(), half.size() * 2);
      } else {
        w.write(h->name, vals.data(), vals.size() * 4);
      }
    }
    w.finish();
  }
  if (S > 1) {
    json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    std::ofstream f(tmp / "model.safetensors.index.json");
    f << index.dump(2) << "\n";
    require(bool(f), "ckpt export: cannot write the index in '" + tmp.string() + "'");
  }
  {
    std::string config = hf_config_json(m, dtype);
    if (!tokenizer.empty()) {  // the special ids come from the tokenizer
      json c = json::parse(config);
      if (bos >= 0) c["bos_token_id"] = bos;
      if (eos >= 0) c["eos_token_id"] = eos;
      config = c.dump(2) + "\n";
    }
    std::ofstream f(tmp / "config.json");
    f << config;
    require(bool(f), "ckpt export: cannot write config.json in '" + tmp.string() + "'");
  }
  for (const auto& [src, name] : tok_files) {
    fs::copy_file(src, tmp / name, ec);
    require(!ec, "ckpt export: cannot copy '" + src.string() + "': " + ec.message());
  }
  fs::remove(out_dir, ec);  // empty, if it exists
  fs::rename(tmp, out_dir, ec);
  require(!ec, "ckpt export: cannot rename '" + tmp.string() + "' to '" + out_dir + "': " + ec.message());
  out << "wrote " << hf_architecture(m) << " to " << out_dir << " (" << hf.size() << " tensors, " << st_dtype << ", "
      << S << " file" << (S > 1 ? "s" : "") << ", " << total << " bytes; step " << st.step << ")\n";
}

bool is_hf_source(const std::string& path) {
  return fs::is_directory(path) || (path.size() > 12 && path.substr(path.size() - 12) == ".safetensors");
}

HfReader::HfReader(const std::string& path, const ModelConfig& m) : path_(path) {
  std::vector<std::string> files;
  if (fs::is_directory(path)) {
    const fs::path index = fs::path(path) / "model.safetensors.index.json";
    if (fs::exists(index)) {
      std::ifstream f(index);
      json j;
      try {
        j = json::parse(f);
        for (auto it = j.at("weight_map").begin(); it != j.at("weight_map").end(); ++it) {
          const std::string file = it.value().get<std::string>();
          if (std::find(files.begin(), files.end(), file) == files.end()) files.push_back(file);
        }
      } catch (const json::exception& e) {
        throw Error("'" + index.string() + "' is not a valid safetensors index (" + e.what() + ")");
      }
      for (auto& f2 : files) f2 = (fs::path(path) / f2).string();
    } else {
      const fs::path single = fs::path(path) / "model.safetensors";
      require(fs::exists(single), "'" + path + "' has neither model.safetensors nor model.safetensors.index.json");
      files.push_back(single.string());
    }
  } else {
    files.push_back(path);
  }
  for (const auto& f : files) {
    files_.push_back(std::make_unique<io::SafetensorsFile>(f));
    for (const auto& [name, t] : files_.back()->tensors()) where_[name] = files_.back().get();
  }
  const std::string arch = hf_architecture(m);
  for (auto h : hf_tensors(m)) {
    if (where_.count(h.name) == 0 && h.name.rfind("transformer.", 0) == 0 && where_.count(h.name.substr(12)) > 0)
      h.name = h.name.substr(12);  // GPT-2 files saved from GPT2Model have no "transformer." prefix
    const auto it = where_.find(h.name);
    require(it != where_.end(), "'" + path + "' has no tensor " + h.name + " (" + arch + " of this model spec)");
    const auto* t = it->second->find(h.name);
    std::vector<std::int64_t> want = h.shape;
    if (h.constant && t->shape.empty()) want.clear();  // a scalar buffer: [] or [1]
    require(t->shape == want, "'" + path + "': tensor " + h.name + " has shape " + shape_str(t->shape) +
                                  ", the model spec needs " + shape_str(h.shape));
    if (h.constant) {
      float v = 0;
      it->second->read(h.name, 0, 1, 1, &v);
      require(std::abs(v - h.value) <= 1e-2f * std::abs(h.value),
              "'" + path + "': " + h.name + " is " + std::to_string(v) + "; Tapestry's xIELU has " + std::to_string(h.value));
      continue;
    }
    tensors_.push_back(h);
  }
  std::sort(tensors_.begin(), tensors_.end(), [](const auto& a, const auto& b) { return a.offset < b.offset; });
}

void HfReader::read(std::size_t whole_begin, std::size_t n, float* dst) const {
  while (n > 0) {  // a run of a vector may span several HF tensors (xIELU's alpha_p, alpha_n)
    auto it = std::upper_bound(tensors_.begin(), tensors_.end(), whole_begin,
                               [](std::size_t w, const HfTensor& h) { return w < h.offset; });
    require(it != tensors_.begin(), "HfReader: offset before the first tensor");
    const HfTensor& h = *(it - 1);
    const std::size_t rel = whole_begin - h.offset, C = std::size_t(h.cols);
    const std::size_t r = rel / C, c = rel % C;
    require(r < std::size_t(h.rows), "HfReader: no tensor holds flat index " + std::to_string(whole_begin));
    const auto* f = where_.at(h.name);
    std::size_t m = 0;  // values taken from this tensor
    if (C == 1) {
      m = std::min(n, std::size_t(h.rows) - r);
      const std::size_t kept = std::min(m, std::size_t(h.keep_rows) > r ? std::size_t(h.keep_rows) - r : 0);
      f->read(h.name, r, kept, 1, dst);
      std::fill(dst + kept, dst + m, 0.0f);
    } else {
      require(c + n <= C, "HfReader: a read crosses the rows of " + h.name);
      m = n;
      if (r >= std::size_t(h.keep_rows)) std::fill(dst, dst + n, 0.0f);  // padded vocabulary rows: zero
      else if (h.transpose) f->read(h.name, c * std::size_t(h.keep_rows) + r, n, std::size_t(h.keep_rows), dst);
      else f->read(h.name, r * C + c, n, 1, dst);
    }
    whole_begin += m, dst += m, n -= m;
  }
}

}  // namespace tapestry::train
