#include "tapestry/io/data_prepare.hpp"

#include <chrono>
#include <cstring>
#include <exception>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string_view>
#include <thread>

#include "tapestry/core/error.hpp"
#include "tapestry/io/mapped_file.hpp"
#include "tapestry/io/token_dataset.hpp"
#include "tapestry/io/tokenizer.hpp"

namespace tapestry::io {

namespace fs = std::filesystem;

std::string unescape(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      const char c = s[++i];
      out += c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
    } else {
      out += s[i];
    }
  }
  return out;
}

namespace {

/// An input file, memory-mapped; its errors say "data prepare: cannot open input '...': ...".
std::unique_ptr<MappedFile> map_input(const std::string& path) {
  try {
    return std::make_unique<MappedFile>(path, "input");
  } catch (const Error& e) {
    throw Error(std::string("data prepare: ") + e.what());
  }
}

bool is_jsonl(const std::string& path) {
  const auto ext = fs::path(path).extension().string();
  return ext == ".jsonl" || ext == ".ndjson";
}

/// One input file: its place in the concatenation and how it splits into documents.
struct Input {
  std::string path;
  std::uint64_t offset = 0;  // global byte offset
  bool jsonl = false;
  std::string sep;           // "" : one document
  std::unique_ptr<MappedFile> map;

  std::uint64_t size() const { return map->size(); }
  std::string_view text() const { return map->view(); }
  /// q > 0 is a document start when a separator ends at q and not also at q + 1 (so a run of
  /// blank lines is one boundary, whichever part looks at it).
  bool canonical_end(std::uint64_t q) const {
    const std::uint64_t k = sep.size(), Z = size();
    auto ends_at = [&](std::uint64_t e) { return e >= k && e <= Z && text().compare(e - k, k, sep) == 0; };
    return ends_at(q) && !ends_at(q + 1);
  }
  /// The first document start >= a (size() if none).
  std::uint64_t next_start(std::uint64_t a) const {
    if (a == 0) return 0;
    const std::uint64_t Z = size();
    if (sep.empty() || a >= Z) return Z;
    const std::uint64_t k = sep.size();
    std::size_t p = text().find(sep, a >= k ? a - k : 0);
    while (p != std::string_view::npos) {
      if (p + k >= a && canonical_end(p + k)) return p + k;
      p = text().find(sep, p + 1);
    }
    return Z;
  }
  /// Where the document starting at s ends (the first separator at or after s, or size()).
  std::uint64_t doc_end(std::uint64_t s) const {
    if (sep.empty()) return size();
    const std::size_t p = text().find(sep, s);
    return p == std::string_view::npos ? size() : p;
  }
};

std::string part_name(const PrepareConfig& cfg, const char* split, int s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), ".part-%05d", s);
  return (fs::path(cfg.output_dir) / (cfg.name + "_" + split + buf)).string();
}

std::string output_name(const PrepareConfig& cfg, const char* split) {
  return (fs::path(cfg.output_dir) / (cfg.name + "_" + split)).string();
}

TokenFormat format_of(const std::string& f) {
  require(f == "llmc" || f == "megatron", "data prepare: --format must be llmc or megatron (got '" + f + "')");
  return f == "llmc" ? TokenFormat::llmc : TokenFormat::megatron;
}

/// The dataset path a format gives a name: llm.c files end in .bin, Megatron datasets are prefixes.
std::string dataset_path(const std::string& name, TokenFormat f) { return f == TokenFormat::llmc ? name + ".bin" : name; }

void remove_dataset(const std::string& name, TokenFormat f) {
  std::error_code ec;
  if (f == TokenFormat::llmc) {
    fs::remove(name + ".bin", ec);
  } else {
    fs::remove(name + ".bin", ec);
    fs::remove(name + ".idx", ec);
  }
}

struct Plan {
  std::vector<Input> inputs;
  std::uint64_t total = 0, cut = 0;  // the validation split starts at global byte `cut`
};

Plan plan_inputs(const PrepareConfig& cfg) {
  require(!cfg.inputs.empty(), "data prepare: no input text files given");
  require(cfg.val_fraction >= 0 && cfg.val_fraction < 1, "data prepare: val_fraction must be in [0, 1)");
  require(cfg.threads >= 1 && cfg.threads <= 1024,
          "data prepare: --threads must be in [1, 1024] (got " + std::to_string(cfg.threads) + ")");
  format_of(cfg.format);
  Plan p;
  const std::string sep = unescape(cfg.doc_separator);
  for (const auto& path : cfg.inputs) {
    Input in;
    in.path = path;
    in.jsonl = is_jsonl(path);
    in.sep = in.jsonl ? std::string("\n") : sep;
    in.map = map_input(path);
    in.offset = p.total;
    p.total += in.size();
    p.inputs.push_back(std::move(in));
  }
  require(p.total > 0, "data prepare: the inputs are empty");
  const std::uint64_t n_val = std::uint64_t(double(p.total) * cfg.val_fraction);
  p.cut = p.total - n_val;
  if (n_val > 0) {
    for (const auto& in : p.inputs) {
      if (p.cut < in.offset || p.cut >= in.offset + in.size()) continue;
      std::uint64_t q = p.cut - in.offset;
      if (in.sep.empty()) {  // one document: cut inside it, at a character boundary
        while (q < in.size() && (static_cast<unsigned char>(in.text()[q]) & 0xC0) == 0x80) ++q;
      } else {
        q = in.next_start(q);
      }
      p.cut = in.offset + q;
      break;
    }
  }
  require(cfg.val_fraction == 0 || p.cut < p.total, "data prepare: corpus too small for a validation split");
  return p;
}

struct Counts {
  std::uint64_t documents = 0, empty = 0, bytes = 0, tokens = 0;
};

/// Tokenizes the pieces (documents, cut at the validation split) that start in sub-part s of n.
Counts tokenize_sub(const PrepareConfig& cfg, const Plan& plan, const Tokenizer& tok, int s, int n, bool progress) {
  const TokenFormat fmt = format_of(cfg.format);
  TokenDatasetWriter train(dataset_path(part_name(cfg, "train", s), fmt), fmt, tok.vocab_size());
  std::unique_ptr<TokenDatasetWriter> val;
  if (cfg.val_fraction > 0)
    val = std::make_unique<TokenDatasetWriter>(dataset_path(part_name(cfg, "val", s), fmt), fmt, tok.vocab_size());
  const unsigned __int128 S = plan.total;
  const std::uint64_t gs = std::uint64_t(S * unsigned(s) / unsigned(n)), ge = std::uint64_t(S * unsigned(s + 1) / unsigned(n));
  const std::int64_t bos = cfg.add_bos ? tok.bos_id() : -1, eos = cfg.add_eos ? tok.eos_id() : -1;
  Counts c;
  std::vector<std::uint32_t> doc;
  int shown = -1;
  auto piece = [&](const Input& in, std::uint64_t x, std::uint64_t y) {
    std::string_view text = in.text().substr(x, y - x);
    std::string field;
    if (in.jsonl) {
      if (text.find_first_not_of(" \t\r\n") == std::string_view::npos) return;  // a blank line
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(text.begin(), text.end());
      } catch (const std::exception& e) {
        throw Error("data prepare: '" + in.path + "' at byte " + std::to_string(x) + ": not a JSON line (" + e.what() + ")");
      }
      require(j.is_object() && j.contains(cfg.text_key) && j[cfg.text_key].is_string(),
              "data prepare: '" + in.path + "' at byte " + std::to_string(x) + ": no string field '" + cfg.text_key + "'");
      field = j[cfg.text_key].get<std::string>();
      text = field;
    }
    if (text.empty()) {
      ++c.empty;
      return;
    }
    const auto ids = tok.encode(text);
    doc.clear();
    if (bos >= 0) doc.push_back(std::uint32_t(bos));
    doc.insert(doc.end(), ids.begin(), ids.end());
    if (eos >= 0) doc.push_back(std::uint32_t(eos));
    (in.offset + x < plan.cut || !val ? train : *val).add_document(doc.data(), doc.size());
    ++c.documents;
    c.tokens += doc.size();
    if (progress && ge > gs) {
      const int pct = int(100.0 * double(in.offset + y - gs) / double(ge - gs));
      if (pct / 5 != shown / 5 && pct <= 100) {
        shown = pct;
        std::cerr << "\rdata prepare: " << pct << "% of part 0" << std::flush;
      }
    }
  };
  for (const auto& in : plan.inputs) {
    const std::uint64_t F = in.offset, Z = in.size();
    if (F + Z <= gs || F >= ge || Z == 0) continue;
    const std::uint64_t a = gs > F ? gs - F : 0, b = ge < F + Z ? ge - F : Z;
    const std::uint64_t cut = plan.cut >= F && plan.cut < F + Z ? plan.cut - F : Z;  // the split inside this file
    for (std::uint64_t x = in.next_start(a); x < b;) {
      const std::uint64_t y = in.doc_end(x);
      if (x < cut && cut < y) piece(in, x, cut);  // the piece after the cut belongs to the part holding `cut`
      else piece(in, x, y);
      if (y >= Z) break;
      x = in.next_start(y + 1);
    }
    // A file that is one document and holds the validation split: its tail [cut, Z) is a piece
    // of its own, owned by the part that holds `cut`. (With separators the cut is a document start.)
    if (in.sep.empty() && cut > 0 && cut < Z && cut >= a && cut < b) piece(in, cut, Z);
  }
  c.bytes = ge - gs;
  if (progress) std::cerr << "\rdata prepare: 100% of part 0\n";
  train.finish();
  if (val) val->finish();
  return c;
}

}  // namespace

PrepareResult prepare_part(const PrepareConfig& cfg, int part, int parts, bool progress) {
  const auto tl = std::chrono::steady_clock::now();
  const Plan plan = plan_inputs(cfg);
  const auto tok = load_tokenizer(cfg.tokenizer);
  const auto t0 = std::chrono::steady_clock::now();
  const TokenFormat fmt = format_of(cfg.format);
  require(fmt != TokenFormat::llmc || !fs::exists(output_name(cfg, "train") + ".idx"),
          "data prepare: '" + output_name(cfg, "train") + ".idx' exists (a Megatron dataset of that name); remove it or "
                                                          "choose another --name");
  std::error_code ec;
  fs::create_directories(cfg.output_dir, ec);
  require(!ec, "data prepare: cannot create '" + cfg.output_dir + "': " + ec.message());
  const int nt = cfg.threads, n = parts * nt;
  std::vector<Counts> counts(static_cast<std::size_t>(nt));
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(nt));
  std::vector<std::thread> pool;
  for (int t = 0; t < nt; ++t)
    pool.emplace_back([&, t] {
      try {
        counts[std::size_t(t)] = tokenize_sub(cfg, plan, *tok, part * nt + t, n, progress && t == 0);
      } catch (...) {
        errors[std::size_t(t)] = std::current_exception();
      }
    });
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  PrepareResult r;
  for (const auto& c : counts) {
    r.documents += c.documents, r.empty_documents += c.empty, r.bytes += c.bytes, r.tokens += c.tokens;
  }
  r.tokenizer = tok->describe();
  r.vocab_size = tok->vocab_size();
  r.bos = cfg.add_bos ? tok->bos_id() : -1;
  r.eos = cfg.add_eos ? tok->eos_id() : -1;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.load_seconds = std::chrono::duration<double>(t0 - tl).count();
  return r;
}

PrepareResult prepare_join(const PrepareConfig& cfg, int parts, const PrepareResult& part) {
  const TokenFormat fmt = format_of(cfg.format);
  const int n = parts * cfg.threads;
  PrepareResult r = part;
  for (const char* split : {"train", "val"}) {
    if (std::string(split) == "val" && cfg.val_fraction == 0) continue;
    std::vector<std::string> names;
    for (int s = 0; s < n; ++s) names.push_back(dataset_path(part_name(cfg, split, s), fmt));
    const std::string out = dataset_path(output_name(cfg, split), fmt);
    concat_token_datasets(names, out, fmt, part.vocab_size);
    for (int s = 0; s < n; ++s) remove_dataset(part_name(cfg, split, s), fmt);
    const auto ds = TokenDataset::open(out);
    if (std::string(split) == "train") r.train_path = out, r.train_tokens = ds->num_tokens();
    else r.val_path = out, r.val_tokens = ds->num_tokens();
  }
  return r;
}

PrepareResult prepare_data(const PrepareConfig& cfg) { return prepare_join(cfg, 1, prepare_part(cfg, 0, 1, false)); }

}  // namespace tapestry::io
