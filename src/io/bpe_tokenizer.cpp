// Hugging Face tokenizer.json, byte-level BPE (GPT-2, Llama 3, tiktoken conversions).
//
// encode(text):
//   1. split the text on added tokens (leftmost, longest first); their ids are emitted whole;
//   2. each remaining segment goes through the pre-tokenizer steps (Split / ByteLevel / Digits),
//      each step splitting every piece further, as the Hugging Face library does;
//   3. each piece ("word") is byte-level BPE encoded: its bytes are the first symbols, then the
//      adjacent pair with the lowest merge rank is merged (leftmost on ties) until none is left.
//      With ignore_merges, a word that is itself in the vocabulary is emitted directly.
//
// Text that is not valid UTF-8 is accepted: the regexes are compiled with PCRE2_MATCH_INVALID_UTF,
// so invalid bytes are never part of a match and become pieces of their own; every byte has a
// token, so decode(encode(text)) == text for any bytes (unless ByteLevel adds a prefix space).
//
// encode() is const and thread-safe: the regex match data and the word cache are thread_local.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "tapestry/core/error.hpp"
#include "tapestry/io/tokenizer.hpp"

namespace tapestry::io {
namespace {

using json = nlohmann::json;
constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

/// GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 upwards.
std::vector<std::uint32_t> bytes_to_unicode() {
  std::vector<std::uint32_t> cp(256, kNone);
  auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
  std::uint32_t next = 256;
  for (int b = 0; b < 256; ++b) cp[std::size_t(b)] = printable(b) ? std::uint32_t(b) : next++;
  return cp;
}

void append_utf8(std::string& s, std::uint32_t c) {
  if (c < 0x80) {
    s += char(c);
  } else if (c < 0x800) {
    s += char(0xC0 | (c >> 6));
    s += char(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    s += char(0xE0 | (c >> 12));
    s += char(0x80 | ((c >> 6) & 0x3F));
    s += char(0x80 | (c & 0x3F));
  } else {
    s += char(0xF0 | (c >> 18));
    s += char(0x80 | ((c >> 12) & 0x3F));
    s += char(0x80 | ((c >> 6) & 0x3F));
    s += char(0x80 | (c & 0x3F));
  }
}

/// Length of the UTF-8 character starting with `lead` (1 for a byte that cannot start one).
std::size_t utf8_len(unsigned char lead) {
  if (lead < 0xC0) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  if (lead < 0xF8) return 4;
  return 1;
}

/// Decodes valid UTF-8 into code points; false if `s` is not valid UTF-8.
bool decode_utf8(std::string_view s, std::vector<std::uint32_t>& out) {
  out.clear();
  for (std::size_t i = 0; i < s.size();) {
    const auto lead = static_cast<unsigned char>(s[i]);
    const std::size_t n = utf8_len(lead);
    if ((n == 1 && lead >= 0x80) || i + n > s.size()) return false;
    std::uint32_t c = n == 1 ? lead : n == 2 ? (lead & 0x1Fu) : n == 3 ? (lead & 0x0Fu) : (lead & 0x07u);
    for (std::size_t k = 1; k < n; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) return false;
      c = (c << 6) | (b & 0x3Fu);
    }
    out.push_back(c);
    i += n;
  }
  return true;
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/// A compiled PCRE2 pattern, shared read-only by all threads.
class Regex {
 public:
  Regex(const std::string& pattern, bool literal, const std::string& where) : where_(where) {
    int err = 0;
    PCRE2_SIZE err_off = 0;
    const std::uint32_t opts =
        PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);  // UCP is no option of a literal
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), opts, &err, &err_off, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw Error(where + ": regex '" + pattern + "' rejected by PCRE2 at offset " + std::to_string(err_off) + ": " +
                  reinterpret_cast<const char*>(msg));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter where JIT is missing
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  /// Calls on_piece(begin, end, is_match) for the matches and the gaps between them, in order.
  template <class F>
  void split(std::string_view s, F&& on_piece) const {
    Scratch& sc = scratch();
    const auto* subj = reinterpret_cast<PCRE2_SPTR>(s.data());
    std::size_t last = 0, off = 0;
    while (off <= s.size()) {
      const int rc = pcre2_match(code_, subj, s.size(), off, 0, sc.md, sc.mctx);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        throw Error(where_ + ": regex match failed: " + reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(sc.md);
      const std::size_t b = ov[0], e = ov[1];
      if (e > b) {
        if (b > last) on_piece(last, b, false);
        on_piece(b, e, true);
        last = off = e;
      } else {  // empty match: no piece, move on one character
        if (b >= s.size()) break;
        off = b + std::min(utf8_len(static_cast<unsigned char>(s[b])), s.size() - b);
      }
    }
    if (last < s.size()) on_piece(last, s.size(), false);
  }

 private:
  struct Scratch {
    pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
    pcre2_match_context* mctx = pcre2_match_context_create(nullptr);
    pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    Scratch() { pcre2_jit_stack_assign(mctx, nullptr, stack); }
    ~Scratch() {
      pcre2_jit_stack_free(stack);
      pcre2_match_context_free(mctx);
      pcre2_match_data_free(md);
    }
  };
  static Scratch& scratch() {
    thread_local Scratch s;
    return s;
  }
  std::string where_;
  pcre2_code* code_ = nullptr;
};

/// One pre-tokenizer step; every step splits each piece into smaller pieces.
struct PreStep {
  enum class Kind { split, prefix_space } kind = Kind::split;
  std::shared_ptr<const Regex> regex;
  bool keep_matches = true, keep_gaps = true;  ///< Isolated keeps both; Removed only one side
};

const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct AddedToken {
  std::string content;
  std::uint32_t id = 0;
  bool special = false, lstrip = false, rstrip = false;
};

std::atomic<std::uint64_t> g_next_uid{1};

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(const std::string& path);

  std::vector<std::uint32_t> encode(std::string_view text) const override {
    std::vector<std::uint32_t> out;
    out.reserve(text.size() / 3 + 1);
    std::size_t seg = 0, pos = 0;
    const std::size_t n = text.size();
    while (pos < n) {
      const auto& cands = added_by_first_[static_cast<unsigned char>(text[pos])];
      const AddedToken* hit = nullptr;
      for (const std::uint32_t k : cands) {  // longest first
        const std::string& c = added_[k].content;
        if (c.size() <= n - pos && std::memcmp(text.data() + pos, c.data(), c.size()) == 0) {
          hit = &added_[k];
          break;
        }
      }
      if (!hit) {
        ++pos;
        continue;
      }
      std::size_t b = pos, e = pos + hit->content.size();
      if (hit->lstrip) while (b > seg && is_space(text[b - 1])) --b;
      if (hit->rstrip) while (e < n && is_space(text[e])) ++e;
      encode_segment(text.substr(seg, b - seg), out);
      out.push_back(hit->id);
      seg = pos = e;
    }
    encode_segment(text.substr(seg), out);
    return out;
  }

  std::string decode(const std::vector<std::uint32_t>& ids) const override {
    std::string s;
    for (const std::uint32_t id : ids) {
      require(id < id_bytes_.size() && has_id_[id],
              "tokenizer '" + path_ + "' cannot decode token id " + std::to_string(id));
      s += id_bytes_[id];
    }
    return s;
  }

  std::uint32_t vocab_size() const override { return std::uint32_t(id_bytes_.size()); }
  std::int64_t bos_id() const override { return bos_; }
  std::int64_t eos_id() const override { return eos_; }
  std::string describe() const override {
    auto id = [](std::int64_t v) { return v < 0 ? std::string("none") : std::to_string(v); };
    return "byte-level BPE '" + path_ + "' (" + std::to_string(vocab_size()) + " ids, bos " + id(bos_) + ", eos " +
           id(eos_) + ")";
  }

 private:
  struct Merge {
    std::uint32_t rank, id;
  };
  static std::uint64_t pair_key(std::uint32_t a, std::uint32_t b) { return (std::uint64_t(a) << 32) | b; }
  const Merge* find_merge(std::uint32_t a, std::uint32_t b) const {
    const auto it = merges_.find(pair_key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }

  void encode_segment(std::string_view seg, std::vector<std::uint32_t>& out) const {
    if (seg.empty()) return;
    // Pieces are views into `seg` or into `owned` (pieces given a prefix space).
    thread_local std::vector<std::string_view> cur, next;
    std::deque<std::string> owned;
    cur.assign(1, seg);
    for (const PreStep& st : steps_) {
      next.clear();
      for (const std::string_view p : cur) {
        if (st.kind == PreStep::Kind::prefix_space) {
          if (p.front() == ' ') {
            next.push_back(p);
          } else {
            owned.push_back(" " + std::string(p));
            next.push_back(owned.back());
          }
          continue;
        }
        st.regex->split(p, [&](std::size_t b, std::size_t e, bool is_match) {
          if (is_match ? st.keep_matches : st.keep_gaps) next.push_back(p.substr(b, e - b));
        });
      }
      std::swap(cur, next);
    }
    for (const std::string_view w : cur) encode_word(w, out);
  }

  void encode_word(std::string_view w, std::vector<std::uint32_t>& out) const {
    if (ignore_merges_) {
      const auto it = raw_vocab_.find(std::string(w));
      if (it != raw_vocab_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    if (w.size() == 1) {
      out.push_back(byte_id(static_cast<unsigned char>(w[0])));
      return;
    }
    struct Cache {
      std::uint64_t owner = 0;
      std::unordered_map<std::string, std::vector<std::uint32_t>> map;
    };
    thread_local Cache cache;
    const bool cacheable = w.size() <= 64;
    if (cacheable) {
      if (cache.owner != uid_) {
        cache.map.clear();
        cache.owner = uid_;
      }
      const auto it = cache.map.find(std::string(w));
      if (it != cache.map.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const std::size_t first = out.size();
    if (w.size() <= 128)
      merge_small(w, out);
    else
      merge_large(w, out);
    if (cacheable) {
      if (cache.map.size() >= 1u << 16) cache.map.clear();
      cache.map.emplace(std::string(w), std::vector<std::uint32_t>(out.begin() + std::ptrdiff_t(first), out.end()));
    }
  }

  std::uint32_t byte_id(unsigned char b) const {
    if (byte_id_[b] == kNone) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02X", unsigned(b));
      throw Error("tokenizer '" + path_ + "': byte " + hex + " has no token (not in the vocabulary, no byte_fallback)");
    }
    return byte_id_[b];
  }

  /// Short words: symbols and the ranks of adjacent pairs in flat arrays, O(n^2) in the worst case.
  void merge_small(std::string_view w, std::vector<std::uint32_t>& out) const {
    thread_local std::vector<std::uint32_t> sym, rank, nid;
    const std::size_t n = w.size();
    sym.resize(n);
    for (std::size_t i = 0; i < n; ++i) sym[i] = byte_id(static_cast<unsigned char>(w[i]));
    rank.resize(n - 1);
    nid.resize(n - 1);
    auto set_pair = [&](std::size_t i) {
      const Merge* m = find_merge(sym[i], sym[i + 1]);
      rank[i] = m ? m->rank : kNone;
      nid[i] = m ? m->id : kNone;
    };
    for (std::size_t i = 0; i + 1 < n; ++i) set_pair(i);
    std::size_t len = n;
    while (len > 1) {
      std::size_t best = 0;
      for (std::size_t i = 1; i + 1 < len; ++i)
        if (rank[i] < rank[best]) best = i;
      if (rank[best] == kNone) break;
      sym[best] = nid[best];
      sym.erase(sym.begin() + std::ptrdiff_t(best) + 1);
      rank.erase(rank.begin() + std::ptrdiff_t(best));
      nid.erase(nid.begin() + std::ptrdiff_t(best));
      --len;
      if (best > 0) set_pair(best - 1);
      if (best + 1 < len) set_pair(best);
    }
    out.insert(out.end(), sym.begin(), sym.begin() + std::ptrdiff_t(len));
  }

  /// Long words: a linked list of symbols and a heap of candidate merges, ordered by (rank, position).
  void merge_large(std::string_view w, std::vector<std::uint32_t>& out) const {
    struct Sym {
      std::uint32_t id;
      std::int64_t prev, next;
    };
    struct Cand {
      std::uint32_t rank;
      std::int64_t pos;
      std::uint32_t left, right, id;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    const auto n = std::int64_t(w.size());
    std::vector<Sym> sym(w.size());
    for (std::int64_t i = 0; i < n; ++i)
      sym[std::size_t(i)] = {byte_id(static_cast<unsigned char>(w[std::size_t(i)])), i - 1, i + 1 < n ? i + 1 : -1};
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto push = [&](std::int64_t i) {
      if (i < 0) return;
      const std::int64_t j = sym[std::size_t(i)].next;
      if (j < 0) return;
      const std::uint32_t a = sym[std::size_t(i)].id, b = sym[std::size_t(j)].id;
      if (const Merge* m = find_merge(a, b)) heap.push(Cand{m->rank, i, a, b, m->id});
    };
    for (std::int64_t i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      Sym& l = sym[std::size_t(c.pos)];
      if (l.id != c.left || l.next < 0) continue;  // stale: the left symbol changed or was merged away
      Sym& r = sym[std::size_t(l.next)];
      if (r.id != c.right) continue;
      l.id = c.id;
      r.id = kNone;
      l.next = r.next;
      if (l.next >= 0) sym[std::size_t(l.next)].prev = c.pos;
      push(l.prev);
      push(c.pos);
    }
    for (std::int64_t i = 0; i >= 0; i = sym[std::size_t(i)].next) out.push_back(sym[std::size_t(i)].id);
  }

  void parse_pre_tokenizer(const json& pt);
  void parse_post_processor(const json& pp, std::int64_t& bos, std::int64_t& eos) const;
  std::int64_t id_of(const std::string& token) const;

  std::string path_;
  std::uint64_t uid_ = g_next_uid++;
  std::vector<PreStep> steps_;
  bool byte_level_ = false, ignore_merges_ = false;
  std::unordered_map<std::string, std::uint32_t> vocab_;      ///< token (byte-level mapped) -> id
  std::unordered_map<std::string, std::uint32_t> raw_vocab_;  ///< the token's bytes -> id
  std::unordered_map<std::uint64_t, Merge> merges_;           ///< (left id, right id) -> rank, result
  std::uint32_t byte_id_[256];
  std::vector<AddedToken> added_;
  std::vector<std::uint32_t> added_by_first_[256];  ///< added tokens by first byte, longest first
  std::vector<std::string> id_bytes_;               ///< what each id decodes to
  std::vector<char> has_id_;
  std::int64_t bos_ = -1, eos_ = -1;
};

std::string type_of(const json& j) { return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : "?"; }

void BpeTokenizer::parse_pre_tokenizer(const json& pt) {
  const std::string where = "tokenizer '" + path_ + "'";
  const std::string type = type_of(pt);
  if (type == "Sequence") {
    for (const json& sub : pt.at("pretokenizers")) parse_pre_tokenizer(sub);
  } else if (type == "ByteLevel") {
    byte_level_ = true;
    if (pt.value("add_prefix_space", true)) steps_.push_back({PreStep::Kind::prefix_space, nullptr, true, true});
    if (pt.value("use_regex", true))
      steps_.push_back({PreStep::Kind::split, std::make_shared<Regex>(kGpt2Pattern, false, where), true, true});
  } else if (type == "Split") {
    const json& pat = pt.at("pattern");
    std::shared_ptr<Regex> re;
    if (pat.contains("Regex"))
      re = std::make_shared<Regex>(pat["Regex"].get<std::string>(), false, where);
    else if (pat.contains("String"))
      re = std::make_shared<Regex>(pat["String"].get<std::string>(), true, where);
    else
      throw Error(where + ": Split pre-tokenizer pattern is neither Regex nor String");
    const std::string behavior = pt.value("behavior", std::string("Isolated"));
    const bool invert = pt.value("invert", false);
    if (behavior == "Isolated")
      steps_.push_back({PreStep::Kind::split, re, true, true});
    else if (behavior == "Removed")
      steps_.push_back({PreStep::Kind::split, re, invert, !invert});
    else
      throw Error(where + ": Split pre-tokenizer behavior '" + behavior + "' is not supported (Isolated, Removed)");
  } else if (type == "Digits") {
    const char* re = pt.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)";
    steps_.push_back({PreStep::Kind::split, std::make_shared<Regex>(re, false, where), true, true});
  } else {
    throw Error(where + ": pre-tokenizer '" + type + "' is not supported (ByteLevel, Split, Digits, Sequence)");
  }
}

std::int64_t BpeTokenizer::id_of(const std::string& token) const {
  for (const AddedToken& a : added_)
    if (a.content == token) return a.id;
  const auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : std::int64_t(it->second);
}

void BpeTokenizer::parse_post_processor(const json& pp, std::int64_t& bos, std::int64_t& eos) const {
  const std::string type = type_of(pp);
  if (type == "Sequence") {
    for (const json& sub : pp.at("processors")) parse_post_processor(sub, bos, eos);
    return;
  }
  if (type != "TemplateProcessing" || !pp.contains("single")) return;
  bool seen_a = false;
  for (const json& item : pp["single"]) {
    if (item.contains("Sequence")) {
      seen_a = true;
    } else if (item.contains("SpecialToken")) {
      const std::string name = item["SpecialToken"].at("id").get<std::string>();
      std::int64_t id = -1;
      if (pp.contains("special_tokens") && pp["special_tokens"].contains(name)) {
        const json& ids = pp["special_tokens"][name].at("ids");
        if (!ids.empty()) id = ids[0].get<std::int64_t>();
      }
      if (id < 0) id = id_of(name);
      (seen_a ? eos : bos) = id;
    }
  }
}

BpeTokenizer::BpeTokenizer(const std::string& path) : path_(path) {
  const std::string where = "tokenizer '" + path + "'";
  std::ifstream f(path, std::ios::binary);
  require(bool(f), where + ": cannot open the file");
  json j;
  try {
    j = json::parse(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  } catch (const json::exception& e) {
    throw Error(where + ": not valid JSON: " + e.what());
  }
  try {
    require(j.is_object() && j.contains("model"), where + ": no 'model' (not a Hugging Face tokenizer.json)");
    const json& model = j["model"];
    const std::string mtype = model.value("type", std::string("BPE"));
    require(mtype == "BPE", where + ": model type '" + mtype + "' is not supported (only BPE)");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      require(!model.contains(k) || model[k].is_null() || model[k] == "",
              where + ": BPE option '" + k + "' is not supported");
    require(!model.contains("dropout") || model["dropout"].is_null() || model["dropout"].get<double>() == 0.0,
            where + ": BPE dropout is not supported");

    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      const json& nz = j["normalizer"];
      const bool empty_seq = type_of(nz) == "Sequence" && nz.contains("normalizers") && nz["normalizers"].empty();
      require(empty_seq, where + ": normalizer '" + type_of(nz) + "' is not supported (only null)");
    }
    if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) parse_pre_tokenizer(j["pre_tokenizer"]);
    require(byte_level_, where + ": only byte-level BPE is supported (no ByteLevel pre-tokenizer)");
    ignore_merges_ = model.value("ignore_merges", false);
    const bool byte_fallback = model.value("byte_fallback", false);

    // Vocabulary, and what each id decodes to.
    const auto cp_of_byte = bytes_to_unicode();
    std::vector<int> byte_of_cp(324, -1);
    for (int b = 0; b < 256; ++b) byte_of_cp[cp_of_byte[std::size_t(b)]] = b;
    std::uint32_t max_id = 0;
    const json& vocab = model.at("vocab");
    require(vocab.is_object(), where + ": model.vocab is not an object");
    vocab_.reserve(vocab.size());
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      const auto id = it.value().get<std::uint32_t>();
      vocab_.emplace(it.key(), id);
      max_id = std::max(max_id, id);
    }
    for (const json& a : j.value("added_tokens", json::array())) {
      AddedToken t;
      t.content = a.at("content").get<std::string>();
      t.id = a.at("id").get<std::uint32_t>();
      t.special = a.value("special", false);
      t.lstrip = a.value("lstrip", false);
      t.rstrip = a.value("rstrip", false);
      require(!a.value("single_word", false), where + ": added token '" + t.content + "' uses single_word (not supported)");
      require(!t.content.empty(), where + ": an added token is empty");
      max_id = std::max(max_id, t.id);
      added_.push_back(std::move(t));
    }
    id_bytes_.assign(std::size_t(max_id) + 1, std::string());
    has_id_.assign(std::size_t(max_id) + 1, 0);
    std::vector<std::uint32_t> cps;
    for (const auto& [tok, id] : vocab_) {
      std::string raw;
      bool ok = decode_utf8(tok, cps);
      for (std::size_t i = 0; ok && i < cps.size(); ++i) {
        if (cps[i] < byte_of_cp.size() && byte_of_cp[cps[i]] >= 0)
          raw += char(byte_of_cp[cps[i]]);
        else
          ok = false;
      }
      if (ok) raw_vocab_.emplace(raw, id);
      const bool byte_token = tok.size() == 6 && tok.compare(0, 3, "<0x") == 0 && tok[5] == '>';
      if (byte_fallback && byte_token)
        id_bytes_[id] = std::string(1, char(std::stoi(tok.substr(3, 2), nullptr, 16)));
      else
        id_bytes_[id] = ok ? raw : tok;
      has_id_[id] = 1;
    }
    for (const AddedToken& t : added_) {
      id_bytes_[t.id] = t.content;
      has_id_[t.id] = 1;
    }
    const std::int64_t unk = model.contains("unk_token") && model["unk_token"].is_string()
                                 ? id_of(model["unk_token"].get<std::string>())
                                 : -1;
    for (int b = 0; b < 256; ++b) {
      std::string ch;
      append_utf8(ch, cp_of_byte[std::size_t(b)]);
      auto it = vocab_.find(ch);
      if (it == vocab_.end() && byte_fallback) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", unsigned(b));
        it = vocab_.find(name);
      }
      byte_id_[b] = it != vocab_.end() ? it->second : unk >= 0 ? std::uint32_t(unk) : kNone;
    }

    // Merges: "a b" strings or [a, b] pairs; rank = position in the list.
    const json& merges = model.value("merges", json::array());
    merges_.reserve(merges.size());
    std::uint32_t rank = 0;
    for (const json& m : merges) {
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const auto sp = s.find(' ');
        require(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos,
                where + ": merge '" + s + "' is not two tokens separated by one space");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else {
        require(m.is_array() && m.size() == 2, where + ": merge " + m.dump() + " is not a pair");
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      }
      const auto ia = vocab_.find(a), ib = vocab_.find(b), iab = vocab_.find(a + b);
      require(ia != vocab_.end() && ib != vocab_.end() && iab != vocab_.end(),
              where + ": merge '" + a + " " + b + "' names a token not in the vocabulary ('" +
                  (ia == vocab_.end() ? a : ib == vocab_.end() ? b : a + b) + "')");
      merges_.emplace(pair_key(ia->second, ib->second), Merge{rank++, iab->second});
    }

    // Added tokens, by first byte, longest first.
    for (std::uint32_t k = 0; k < added_.size(); ++k)
      added_by_first_[static_cast<unsigned char>(added_[k].content[0])].push_back(k);
    for (auto& v : added_by_first_)
      std::stable_sort(v.begin(), v.end(), [&](std::uint32_t x, std::uint32_t y) {
        return added_[x].content.size() > added_[y].content.size();
      });

    // BOS / EOS: the post-processor's single template, else well-known special token names.
    if (j.contains("post_processor") && !j["post_processor"].is_null()) parse_post_processor(j["post_processor"], bos_, eos_);
    auto special = [&](const char* name) -> std::int64_t {
      for (const AddedToken& t : added_)
        if (t.special && t.content == name) return t.id;
      return -1;
    };
    for (const char* name : {"<|endoftext|>", "<|end_of_text|>", "</s>"})
      if (eos_ < 0) eos_ = special(name);
    for (const char* name : {"<|begin_of_text|>", "<s>"})
      if (bos_ < 0) bos_ = special(name);
  } catch (const json::exception& e) {
    throw Error(where + ": unexpected structure: " + e.what());
  }
}

}  // namespace

std::unique_ptr<Tokenizer> load_bpe_tokenizer(const std::string& tokenizer_json) {
  return std::make_unique<BpeTokenizer>(tokenizer_json);
}

}  // namespace tapestry::io
