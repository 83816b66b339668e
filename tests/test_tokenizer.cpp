// Tokenizers without an external oracle: the byte tokenizer, a hand-made byte-level BPE
// tokenizer.json whose ids are worked out by hand, added tokens, BOS/EOS, errors, and a small
// SentencePiece model trained from tests/data. The comparisons with tiktoken and spm_encode are
// tests/tokenizer_golden.cpp and tests/spm_golden.sh.
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <thread>

#include "catch.hpp"
#include "temp_files.hpp"
#include "tapestry/core/error.hpp"
#include "tapestry/io/tokenizer.hpp"

using namespace tapestry;
using namespace tapestry::io;
using Catch::Matchers::Contains;
using Ids = std::vector<std::uint32_t>;
namespace fs = std::filesystem;
using tapestry::test::TempDir;
using tapestry::test::slurp;
using tapestry::test::spit;

namespace {

/// A byte-level BPE tokenizer.json small enough to follow by hand ("Ġ" is the space byte).
///   vocab  a:0 b:1 c:2 Ġ:3 ab:4 abc:5 Ġab:6 d:7 cd:8 bd:9 1:13 2:14 12:15
///   merges (rank 0..4)  a b -> ab,  ab c -> abc,  Ġ ab -> Ġab,  c d -> cd,  1 2 -> 12
///   added  <x>:10  <x><x>:11  </s>:12 (special); the template puts <x> before $A (BOS)
nlohmann::json tiny_json() {
  return nlohmann::json::parse(R"({
    "version": "1.0",
    "added_tokens": [
      {"id": 10, "content": "<x>", "special": true},
      {"id": 11, "content": "<x><x>", "special": true},
      {"id": 12, "content": "</s>", "special": true}
    ],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
    "post_processor": {"type": "TemplateProcessing",
                       "single": [{"SpecialToken": {"id": "<x>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                       "special_tokens": {"<x>": {"id": "<x>", "ids": [10], "tokens": ["<x>"]}}},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "ignore_merges": false,
              "vocab": {"a": 0, "b": 1, "c": 2, "Ġ": 3, "ab": 4, "abc": 5, "Ġab": 6, "d": 7, "cd": 8, "bd": 9,
                        "1": 13, "2": 14, "12": 15},
              "merges": ["a b", ["ab", "c"], "Ġ ab", "c d", "1 2"]}
  })");
}

std::unique_ptr<Tokenizer> load_json(const TempDir& dir, const nlohmann::json& j) {
  spit(dir / "tokenizer.json", j.dump());
  return load_bpe_tokenizer(dir / "tokenizer.json");
}
}  // namespace

TEST_CASE("byte tokenizer round trip", "[tokenizer]") {
  const auto tok = make_byte_tokenizer();
  std::string all;
  for (int b = 0; b < 256; ++b) all += char(b);
  const Ids ids = tok->encode(all);
  REQUIRE(ids.size() == 256);
  for (std::uint32_t b = 0; b < 256; ++b) REQUIRE(ids[b] == b);
  REQUIRE(tok->decode(ids) == all);
  REQUIRE(tok->vocab_size() == 256);
  REQUIRE(tok->bos_id() == -1);
  REQUIRE(tok->eos_id() == -1);
  REQUIRE_THROWS_WITH(tok->decode({300}), Contains("cannot decode token id 300"));
  REQUIRE(load_tokenizer("byte")->vocab_size() == 256);
}

TEST_CASE("byte-level BPE: merges by rank, added tokens, BOS/EOS", "[tokenizer]") {
  TempDir dir("bpe_tiny");
  const auto tok = load_json(dir, tiny_json());
  // "abcd": a b c d -> (a b, rank 0) ab c d -> (ab c, rank 1 beats c d, rank 3) abc d.
  // " abd": Ġ a b d -> Ġ ab d -> (Ġ ab) Ġab d.  "cdab": c d a b -> c d ab (rank 0 first) -> cd ab.
  REQUIRE(tok->encode("abcd abd") == Ids{5, 7, 6, 7});
  REQUIRE(tok->encode("cdab") == Ids{8, 4});
  REQUIRE(tok->encode("bd") == Ids{1, 7});  // no merge makes "bd" and ignore_merges is off
  REQUIRE(tok->encode("12") == Ids{15});
  REQUIRE(tok->encode("") == Ids{});
  REQUIRE(tok->decode({5, 7, 6, 7}) == "abcd abd");

  // Added tokens are found before pre-tokenization, longest first, and kept whole.
  REQUIRE(tok->encode("ab<x><x><x>cd") == Ids{4, 11, 10, 8});
  REQUIRE(tok->encode("</s>") == Ids{12});
  REQUIRE(tok->decode({4, 11, 10, 8, 12}) == "ab<x><x><x>cd</s>");

  REQUIRE(tok->vocab_size() == 16);
  REQUIRE(tok->bos_id() == 10);  // the template's special token before $A
  REQUIRE(tok->eos_id() == 12);  // none after $A: the special token named </s>
  REQUIRE_THAT(tok->describe(), Contains("16 ids, bos 10, eos 12"));

  // A byte without a token, an id without a token.
  REQUIRE_THROWS_WITH(tok->encode("abz"), Contains("byte 0x7A has no token"));
  REQUIRE_THROWS_WITH(tok->decode({16}), Contains("cannot decode token id 16"));

  // Through load_tokenizer: the file, and the folder holding it.
  REQUIRE(load_tokenizer(dir / "tokenizer.json")->encode("abcd") == Ids{5, 7});
  REQUIRE(load_tokenizer(dir.path.string())->encode("abcd") == Ids{5, 7});
}

TEST_CASE("byte-level BPE: ignore_merges, Split, Digits, prefix space", "[tokenizer]") {
  TempDir dir("bpe_options");
  auto j = tiny_json();
  j["model"]["ignore_merges"] = true;
  REQUIRE(load_json(dir, j)->encode("bd") == Ids{9});  // the whole word is a token: taken as is

  j = tiny_json();
  j["pre_tokenizer"] = nlohmann::json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Digits", "individual_digits": true},
      {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]})");
  REQUIRE(load_json(dir, j)->encode("ab12") == Ids{4, 13, 14});

  j["pre_tokenizer"]["pretokenizers"][0] =
      nlohmann::json::parse(R"({"type": "Split", "pattern": {"String": "c"}, "behavior": "Isolated", "invert": false})");
  REQUIRE(load_json(dir, j)->encode("abcd") == Ids{4, 2, 7});  // "ab" "c" "d": the split stops ab+c

  j["pre_tokenizer"]["pretokenizers"][0] =
      nlohmann::json::parse(R"({"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Removed", "invert": false})");
  REQUIRE(load_json(dir, j)->encode("ab  abc") == Ids{4, 5});

  j = tiny_json();
  j["pre_tokenizer"]["add_prefix_space"] = true;
  REQUIRE(load_json(dir, j)->encode("ab") == Ids{6});  // " ab"
}

TEST_CASE("byte-level BPE: encode from several threads at once", "[tokenizer]") {
  TempDir dir("bpe_threads");
  const auto tok = load_json(dir, tiny_json());
  std::string text;
  for (int i = 0; i < 2000; ++i) text += (i % 3 ? "abcd abd " : "cdab<x>12 ");
  const Ids want = tok->encode(text);
  std::vector<Ids> got(4);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < got.size(); ++t) threads.emplace_back([&, t] { got[t] = tok->encode(text); });
  for (auto& th : threads) th.join();
  for (const auto& g : got) REQUIRE(g == want);
  REQUIRE(tok->decode(want) == text);
}

TEST_CASE("byte-level BPE: bad files name the file and the problem", "[tokenizer]") {
  TempDir dir("bpe_errors");
  const std::string path = dir / "tokenizer.json";
  REQUIRE_THROWS_WITH(load_bpe_tokenizer(dir / "missing.json"), Contains("missing.json") && Contains("cannot open"));

  spit(path, "{ not json");
  REQUIRE_THROWS_WITH(load_bpe_tokenizer(path), Contains(path) && Contains("not valid JSON"));

  auto j = tiny_json();
  j["model"]["merges"].push_back("a z");
  REQUIRE_THROWS_WITH(load_json(dir, j), Contains(path) && Contains("merge 'a z'") && Contains("not in the vocabulary"));

  j = tiny_json();
  j["normalizer"] = {{"type", "NFC"}};
  REQUIRE_THROWS_WITH(load_json(dir, j), Contains("normalizer 'NFC' is not supported"));

  j = tiny_json();
  j["pre_tokenizer"] = nlohmann::json::parse(R"({"type": "Split", "pattern": {"Regex": "(ab"}, "behavior": "Isolated"})");
  REQUIRE_THROWS_WITH(load_json(dir, j), Contains(path) && Contains("rejected by PCRE2"));

  j["pre_tokenizer"] = nlohmann::json::parse(R"({"type": "Split", "pattern": {"Regex": "a"}, "behavior": "MergedWithPrevious"})");
  REQUIRE_THROWS_WITH(load_json(dir, j), Contains("behavior 'MergedWithPrevious' is not supported"));

  j["pre_tokenizer"] = nlohmann::json::parse(R"({"type": "Metaspace", "replacement": "▁"})");
  REQUIRE_THROWS_WITH(load_json(dir, j), Contains("pre-tokenizer 'Metaspace' is not supported"));

  j["pre_tokenizer"] = nullptr;
  REQUIRE_THROWS_WITH(load_json(dir, j), Contains("only byte-level BPE"));

  j = tiny_json();
  j["model"]["type"] = "WordPiece";
  REQUIRE_THROWS_WITH(load_json(dir, j), Contains("model type 'WordPiece' is not supported"));

  REQUIRE_THROWS_WITH(load_tokenizer(dir / "vocab.txt"), Contains("unknown tokenizer") && Contains("vocab.txt"));
  fs::remove(path);
  REQUIRE_THROWS_WITH(load_tokenizer(dir.path.string()), Contains("holds no tokenizer.json"));
  spit(dir / "bad.model", "not a model");
  REQUIRE_THROWS_WITH(load_tokenizer(dir / "bad.model"), Contains("bad.model"));
}

TEST_CASE("SentencePiece: train, load, round trip", "[tokenizer]") {
  TempDir dir("spm");
  const std::string text_path = std::string(TAPESTRY_SOURCE_DIR) + "/tests/data/multilingual.txt";
  TokenizerTrainConfig cfg;
  cfg.inputs = {text_path};
  cfg.output_prefix = dir / "spm";
  cfg.vocab_size = 800;
  cfg.character_coverage = 0.995;  // the rarest characters become bytes
  for (const char* type : {"unigram", "bpe"}) {
    cfg.model_type = type;
    train_tokenizer(cfg);
    const auto tok = load_tokenizer(dir / "spm.model");
    REQUIRE(tok->vocab_size() == 800);
    REQUIRE(tok->bos_id() == 1);
    REQUIRE(tok->eos_id() == 2);
    const std::string text = slurp(text_path);
    const Ids ids = tok->encode(text);
    REQUIRE(ids.size() < text.size() / 2);
    REQUIRE(tok->decode(ids) == text);  // identity normalization and byte fallback: lossless
  }
  cfg.inputs = {dir / "missing.txt"};
  REQUIRE_THROWS_WITH(train_tokenizer(cfg), Contains("missing.txt"));
  cfg.inputs = {text_path};
  cfg.vocab_size = 50;  // fewer than the characters it must keep
  REQUIRE_THROWS_WITH(train_tokenizer(cfg), Contains("train-tokenizer: "));
}
