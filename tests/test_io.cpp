// Token files, the data loader, the byte tokenizer, data preparation and llm.c checkpoints.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "catch.hpp"
#include "temp_files.hpp"
#include "tapestry/core/error.hpp"
#include "tapestry/io/data_loader.hpp"
#include "tapestry/io/data_prepare.hpp"
#include "tapestry/io/token_dataset.hpp"
#include "tapestry/io/llmc_checkpoint.hpp"
#include "tapestry/io/safetensors.hpp"
#include "tapestry/io/token_file.hpp"
#include "tapestry/io/tokenizer.hpp"
#include "tapestry/model/gpt.hpp"

using namespace tapestry;
using namespace tapestry::io;
namespace fs = std::filesystem;
using tapestry::test::TempDir;
using tapestry::test::slurp;
using tapestry::test::spit;

namespace {
std::vector<DataSource> one(const std::string& path) { return {DataSource{1.0, path}}; }
DataLoader::Options opts(int B, int T, std::uint64_t vocab, int shard = 0, int shards = 1, int micro = 1,
                         bool shuffle = false) {
  DataLoader::Options o;
  o.batch_size = B, o.seq_len = T, o.vocab_size = vocab, o.shard = shard, o.num_shards = shards, o.micro_batches = micro;
  o.shuffle = shuffle;
  return o;
}


std::vector<std::uint16_t> iota_tokens(std::size_t n, int mod) {
  std::vector<std::uint16_t> t(n);
  for (std::size_t i = 0; i < n; ++i) t[i] = std::uint16_t(i % std::size_t(mod));
  return t;
}
}  // namespace

TEST_CASE("token files round-trip in llm.c's exact format", "[io]") {
  TempDir d("tokens");
  const auto toks = iota_tokens(1000, 300);
  write_token_file(d / "a.bin", toks);
  REQUIRE(fs::file_size(d / "a.bin") == 1024 + 2 * toks.size());
  REQUIRE(!fs::exists(d / "a.bin.tmp"));
  const std::string bytes = slurp(d / "a.bin");
  std::int32_t h[3];
  std::memcpy(h, bytes.data(), sizeof(h));
  REQUIRE(h[0] == 20240520);
  REQUIRE(h[1] == 1);
  REQUIRE(h[2] == 1000);
  REQUIRE(read_token_file(d / "a.bin") == toks);
}

TEST_CASE("bad token files are one clear error each", "[io][bad-input]") {
  TempDir d("badtokens");
  write_token_file(d / "good.bin", iota_tokens(100, 7));
  const std::string good = slurp(d / "good.bin");
  REQUIRE_THROWS_WITH(read_token_file(d / "missing.bin"), Catch::Matchers::Contains("cannot open token file"));
  spit(d / "short.bin", good.substr(0, 100));
  REQUIRE_THROWS_WITH(read_token_file(d / "short.bin"), Catch::Matchers::Contains("truncated"));
  spit(d / "cut.bin", good.substr(0, good.size() - 2));
  REQUIRE_THROWS_WITH(read_token_file(d / "cut.bin"), Catch::Matchers::Contains("header promises 100 tokens"));
  std::string bad = good;
  bad[0] = 'X';
  spit(d / "magic.bin", bad);
  REQUIRE_THROWS_WITH(read_token_file(d / "magic.bin"), Catch::Matchers::Contains("wrong magic"));
  bad = good;
  bad[4] = 2;
  spit(d / "version.bin", bad);
  REQUIRE_THROWS_WITH(read_token_file(d / "version.bin"), Catch::Matchers::Contains("unsupported version 2"));
}

TEST_CASE("the data loader is deterministic, wraps, and resumes from a saved position", "[io][loader]") {
  TempDir d("loader");
  const int B = 2, T = 3;
  const auto toks = iota_tokens(20, 17);  // 20 tokens: 3 batches of 6 (+1) fit
  write_token_file(d / "a.bin", toks);
  DataLoader a(one(d / "a.bin"), opts(B, T, 17));
  std::vector<int> in, tg;
  a.next_batch(in, tg);
  REQUIRE(in == std::vector<int>{0, 1, 2, 3, 4, 5});
  REQUIRE(tg == std::vector<int>{1, 2, 3, 4, 5, 6});
  const auto saved = a.position();
  a.next_batch(in, tg);
  const auto second = in;
  a.next_batch(in, tg);
  REQUIRE(in == std::vector<int>{12, 13, 14, 15, 16, 0});
  REQUIRE(a.position().epoch == 1);  // wrapped: 18 + 7 > 20
  a.next_batch(in, tg);
  REQUIRE(in == std::vector<int>{0, 1, 2, 3, 4, 5});

  DataLoader b(one(d / "a.bin"), opts(B, T, 17));
  b.set_position(saved);
  b.next_batch(in, tg);
  REQUIRE(in == second);
  REQUIRE_THROWS_AS(b.set_position({0, 19, 0}), Error);

  // Two shards of B=1 read, together, the rows one loader of B=2 reads, step after step.
  DataLoader whole(one(d / "a.bin"), opts(2, T, 17)), s0(one(d / "a.bin"), opts(1, T, 17, 0, 2)), s1(one(d / "a.bin"), opts(1, T, 17, 1, 2));
  std::vector<int> i0, t0, i1, t1;
  for (int step = 0; step < 5; ++step) {
    whole.next_batch(in, tg);
    s0.next_batch(i0, t0);
    s1.next_batch(i1, t1);
    i0.insert(i0.end(), i1.begin(), i1.end());
    t0.insert(t0.end(), t1.begin(), t1.end());
    REQUIRE(i0 == in);
    REQUIRE(t0 == tg);
    REQUIRE(s0.position() == whole.position());
  }
}

TEST_CASE("every split of a global batch reads the same rows and wraps at the same step", "[io][loader]") {
  TempDir d("split");
  const int T = 3;
  write_token_file(d / "a.bin", iota_tokens(60, 61));  // 60 tokens: 2 global batches of 4 x 3 (+1) per epoch... and a tail
  // One rank with 4 rows; one rank with 2 rows x 2 micro-batches; two ranks with 1 row x 2 micro-batches.
  DataLoader whole(one(d / "a.bin"), opts(4, T, 61));
  DataLoader accum(one(d / "a.bin"), opts(2, T, 61, 0, 1, 2));
  DataLoader r0(one(d / "a.bin"), opts(1, T, 61, 0, 2, 2)), r1(one(d / "a.bin"), opts(1, T, 61, 1, 2, 2));
  std::vector<int> in, tg, a, b, x, y;
  for (int step = 0; step < 12; ++step) {  // several epochs
    whole.next_batch(in, tg);
    std::vector<int> acc, ranks[2];
    for (int m = 0; m < 2; ++m) {
      accum.next_batch(a, b);
      acc.insert(acc.end(), a.begin(), a.end());
      r0.next_batch(x, y);
      ranks[0].insert(ranks[0].end(), x.begin(), x.end());
      r1.next_batch(x, y);
      ranks[1].insert(ranks[1].end(), x.begin(), x.end());
    }
    CAPTURE(step);
    REQUIRE(acc == in);
    // micro-batch m holds rows {2m, 2m+1}: rank 0 row 2m, rank 1 row 2m+1
    std::vector<int> merged;
    for (int m = 0; m < 2; ++m)
      for (int r = 0; r < 2; ++r) merged.insert(merged.end(), ranks[r].begin() + m * T, ranks[r].begin() + (m + 1) * T);
    REQUIRE(merged == in);
    REQUIRE(accum.position() == whole.position());
    REQUIRE(r1.position() == whole.position());
  }
  REQUIRE(whole.position().epoch >= 2);
}

TEST_CASE("shuffled and mixed samples: each sample once per epoch, shares by weight, exact resume, any split", "[io][loader][mixture]") {
  TempDir d("mixture");
  const int T = 4;
  // a: llm.c uint16, 101 tokens = 25 samples, token i at position i; b: Megatron int32 (vocab
  // 100000), 41 tokens = 10 samples, token 70000 + i.
  std::vector<std::uint16_t> a(101);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = std::uint16_t(i);
  write_token_file(d / "a.bin", a);
  {
    TokenDatasetWriter w(d / "b", TokenFormat::megatron, 100000);
    std::vector<std::uint32_t> doc;
    for (std::uint32_t i = 0; i < 41; ++i) doc.push_back(70000 + i);
    w.add_document(doc.data(), 20);
    w.add_document(doc.data() + 20, 21);
    w.finish();
  }
  auto sample_of = [&](int first) { return first >= 70000 ? 1000 + (first - 70000) / T : first / T; };
  std::vector<int> in, tg;
  // One dataset, shuffled: every epoch visits each of its 25 samples once, in a new order.
  DataLoader s(one(d / "a.bin"), opts(1, T, 100000, 0, 1, 1, true));
  std::vector<int> order;
  for (int i = 0; i < 75; ++i) {
    s.next_batch(in, tg);
    REQUIRE(tg[0] == in[0] + 1);  // targets are the inputs shifted by one
    REQUIRE(in[0] % T == 0);
    order.push_back(sample_of(in[0]));
  }
  for (int e = 0; e < 3; ++e) {
    std::vector<int> ep(order.begin() + 25 * e, order.begin() + 25 * (e + 1));
    std::vector<int> sorted = ep;
    std::sort(sorted.begin(), sorted.end());
    for (int k = 0; k < 25; ++k) REQUIRE(sorted[std::size_t(k)] == k);
    int moved = 0;
    for (int k = 0; k < 25; ++k) moved += ep[std::size_t(k)] != k;
    REQUIRE(moved > 15);  // not the identity
  }
  REQUIRE(!std::equal(order.begin(), order.begin() + 25, order.begin() + 25));  // epochs differ
  // A mixture 0.75 a 0.25 b: over 400 samples exactly 300 from a and 100 from b (Megatron's
  // blending is exact at multiples of the weights' denominator), each dataset cycling its epochs.
  const auto mix = parse_data_spec("3 " + (d / "a.bin") + " 1 " + (d / "b"));
  REQUIRE(mix.size() == 2);
  DataLoader m(mix, opts(2, T, 100000, 0, 1, 1, true));
  int from_b = 0;
  std::vector<int> seen_b;
  for (int i = 0; i < 200; ++i) {
    m.next_batch(in, tg);
    for (int b = 0; b < 2; ++b)
      if (in[std::size_t(b * T)] >= 70000) ++from_b, seen_b.push_back(sample_of(in[std::size_t(b * T)]));
  }
  REQUIRE(from_b == 100);
  std::sort(seen_b.begin(), seen_b.end());
  for (int k = 0; k < 10; ++k) REQUIRE(std::count(seen_b.begin(), seen_b.end(), 1000 + k) == 10);  // 10 epochs
  REQUIRE_THAT(m.describe(), Catch::Matchers::Contains("mixture of 2: 0.750") && Catch::Matchers::Contains("megatron int32"));
  // Resume: a loader set to a saved position reads what the uninterrupted one reads next.
  DataLoader u(mix, opts(2, T, 100000, 0, 1, 2, true)), v(mix, opts(2, T, 100000, 0, 1, 2, true));
  for (int i = 0; i < 14; ++i) u.next_batch(in, tg);  // 7 steps of 2 micro-batches
  const auto saved = u.position();
  REQUIRE(saved.file == -1);
  REQUIRE(saved.offset == 28);
  v.set_position(saved);
  std::vector<int> in2, tg2;
  for (int i = 0; i < 10; ++i) {
    u.next_batch(in, tg);
    v.next_batch(in2, tg2);
    REQUIRE(in == in2);
    REQUIRE(tg == tg2);
  }
  // A position from the other order is refused.
  DataLoader seq(one(d / "a.bin"), opts(2, T, 100000));
  REQUIRE_THROWS_WITH(seq.set_position(saved), Catch::Matchers::Contains("mixture or shuffled run"));
  REQUIRE_THROWS_WITH(v.set_position({0, 0, 0}), Catch::Matchers::Contains("read one dataset in order"));
  // Two data-parallel ranks with 2 micro-batches read, together, the rows one rank reads.
  DataLoader whole(mix, opts(4, T, 100000, 0, 1, 1, true));
  DataLoader r0(mix, opts(1, T, 100000, 0, 2, 2, true)), r1(mix, opts(1, T, 100000, 1, 2, 2, true));
  for (int step = 0; step < 20; ++step) {
    whole.next_batch(in, tg);
    for (int mb = 0; mb < 2; ++mb) {
      r0.next_batch(in2, tg2);
      REQUIRE(std::equal(in2.begin(), in2.end(), in.begin() + (2 * mb) * T));
      r1.next_batch(in2, tg2);
      REQUIRE(std::equal(in2.begin(), in2.end(), in.begin() + (2 * mb + 1) * T));
    }
  }
}

TEST_CASE("data specs and mixtures reject bad weights and missing datasets", "[io][loader][bad-input]") {
  TempDir d("mixbad");
  write_token_file(d / "a.bin", iota_tokens(50, 40));
  REQUIRE_THROWS_WITH(parse_data_spec(""), Catch::Matchers::Contains("no dataset given"));
  REQUIRE_THROWS_WITH(parse_data_spec("0.5 A 0.5"), Catch::Matchers::Contains("neither one path nor pairs"));
  REQUIRE_THROWS_WITH(parse_data_spec("0 A 1 B"), Catch::Matchers::Contains("weight of 'A' must be a positive number"));
  REQUIRE_THROWS_WITH(parse_data_spec("-1 A 1 B"), Catch::Matchers::Contains("weight of 'A' must be a positive number"));
  REQUIRE_THROWS_WITH(parse_data_spec("nan A 1 B"), Catch::Matchers::Contains("weight of 'A' must be a positive number"));
  REQUIRE_THROWS_WITH(parse_data_spec("x A 1 B"), Catch::Matchers::Contains("'x' is not a weight"));
  REQUIRE_THROWS_WITH(DataLoader(parse_data_spec("1 " + (d / "a.bin") + " 1 " + (d / "nope")), opts(1, 4, 40, 0, 1, 1, true)),
                      Catch::Matchers::Contains("nope"));
  REQUIRE_THROWS_WITH(DataLoader(one(d / "a.bin"), opts(1, 60, 40, 0, 1, 1, true)),
                      Catch::Matchers::Contains("fewer than one sample"));
}

TEST_CASE("the data loader rejects token ids >= vocab_size and files too small for a batch", "[io][bad-input]") {
  TempDir d("loaderbad");
  write_token_file(d / "a.bin", iota_tokens(50, 40));
  // An id >= vocab_size is found when its row is read (nothing reads a whole dataset): recorded,
  // replaced by 0, and left to the trainer to stop every rank at the step's vote.
  DataLoader bad(one(d / "a.bin"), opts(2, 4, 39));
  std::vector<int> in, tg;
  for (int step = 0; step < 4; ++step) bad.next_batch(in, tg);
  REQUIRE(bad.error().empty());
  bad.next_batch(in, tg);  // tokens 32..40
  REQUIRE_THAT(bad.error(), Catch::Matchers::Contains("token id 39 at position 39 is >= vocab_size 39"));
  REQUIRE(tg[6] == 0);
  REQUIRE_THROWS_WITH(DataLoader(one(d / "a.bin"), opts(7, 8, 40)), Catch::Matchers::Contains("holds 50 tokens, fewer than one global batch: batch_size*seq_len*dp*grad_accum+1 = 57"));
}

TEST_CASE("byte tokenizer and data prepare", "[io][tokenizer]") {
  TempDir d("prepare");
  const std::string text = std::string("hello, w\xc3\xb6rld\n\0x", 16) + std::string(90, 'z');
  const auto tok = make_byte_tokenizer();
  const auto ids = tok->encode(text);
  REQUIRE(ids.size() == text.size());
  REQUIRE(ids[9] == 0xb6);
  REQUIRE(tok->decode(ids) == text);
  spit(d / "in.txt", text);
  PrepareConfig cfg;
  cfg.inputs = {d / "in.txt", d / "in.txt"};
  cfg.output_dir = d / "out";
  cfg.val_fraction = 0.25;
  const auto r = prepare_data(cfg);
  REQUIRE(r.train_tokens + r.val_tokens == 2 * text.size());
  REQUIRE(r.val_tokens == std::size_t(0.25 * double(2 * text.size())));
  const auto tr = read_token_file(r.train_path), va = read_token_file(r.val_path);
  std::vector<std::uint32_t> all(tr.begin(), tr.end());
  all.insert(all.end(), va.begin(), va.end());
  REQUIRE(tok->decode(all) == text + text);
  cfg.inputs = {d / "nope.txt"};
  REQUIRE_THROWS_WITH(prepare_data(cfg), Catch::Matchers::Contains("cannot open input"));
}

TEST_CASE("llm.c checkpoints round-trip and bad ones are rejected", "[io][llmc][bad-input]") {
  TempDir d("llmc");
  ModelConfig m;
  m.n_layer = 2, m.n_head = 2, m.d_model = 8, m.max_seq_len = 16, m.vocab_size = 50, m.padded_vocab_size = 64;
  std::vector<float> p(std::size_t(m.num_parameters()));
  for (std::size_t i = 0; i < p.size(); ++i) p[i] = float(i) * 0.5f;
  write_llmc_checkpoint(d / "m.bin", m, p);
  const auto h = read_llmc_header(d / "m.bin");
  REQUIRE(h.n_layer == 2);
  REQUIRE(h.n_head == 2);
  REQUIRE(h.d_model == 8);
  REQUIRE(h.max_seq_len == 16);
  REQUIRE(h.vocab_size == 50);
  REQUIRE(h.vocab_padded() == 64);
  REQUIRE(read_llmc_params(d / "m.bin", p.size()) == p);
  // llm.c's layout: wte (Vp, C) first, lnfb last
  const auto layout = model::param_layout(h);
  REQUIRE(layout.front().name == "wte");
  REQUIRE(layout.back().name == "lnfb");
  REQUIRE(layout.back().offset + layout.back().size == p.size());

  const std::string good = slurp(d / "m.bin");
  REQUIRE_THROWS_WITH(read_llmc_header(d / "none.bin"), Catch::Matchers::Contains("cannot open checkpoint"));
  spit(d / "short.bin", good.substr(0, 10));
  REQUIRE_THROWS_WITH(read_llmc_header(d / "short.bin"), Catch::Matchers::Contains("truncated"));
  spit(d / "cut.bin", good.substr(0, good.size() - 4));
  REQUIRE_THROWS_WITH(read_llmc_params(d / "cut.bin", p.size()), Catch::Matchers::Contains("its shape needs"));
  std::string bad = good;
  bad[0] ^= 1;
  spit(d / "magic.bin", bad);
  REQUIRE_THROWS_WITH(read_llmc_header(d / "magic.bin"), Catch::Matchers::Contains("wrong magic"));
  bad = good;
  bad[4] = 5;
  spit(d / "bf16.bin", bad);
  REQUIRE_THROWS_WITH(read_llmc_header(d / "bf16.bin"), Catch::Matchers::Contains("version 5"));
  bad = good;
  bad[5 * 4] = 3;  // num_heads = 3 does not divide channels = 8
  spit(d / "heads.bin", bad);
  REQUIRE_THROWS_WITH(read_llmc_header(d / "heads.bin"), Catch::Matchers::Contains("does not divide d_model"));
}

TEST_CASE("safetensors: written tensors read back in every dtype; F16 and BF16 decode exactly", "[io][safetensors]") {
  const auto dir = std::filesystem::temp_directory_path() / "tapestry_test_safetensors";
  std::filesystem::remove_all(dir);  // a fresh directory: files of an earlier run must not count
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "t.safetensors").string();
  const std::vector<float> a = {1.5f, -2.25f, 3e-8f, 65504.0f, -0.0f, 1e30f};
  // bf16 of 1.0, -2.0, 0.15625; f16 of 1.0, -2.0, 0.000060975551605224609375 (smallest normal), 2^-24 (subnormal), inf
  const std::uint16_t b[3] = {0x3f80, 0xc000, 0x3e20};
  const std::uint16_t h[5] = {0x3c00, 0xc000, 0x0400, 0x0001, 0x7c00};
  {
    io::SafetensorsWriter w(path, {{"a", "F32", {2, 3}, 0, 0}, {"b", "BF16", {3}, 0, 0}},
                            {{"format", "pt"}});
    w.write("a", a.data(), a.size() * 4);
    w.write("b", b, sizeof(b));
    REQUIRE_FALSE(std::filesystem::exists(path));  // only .tmp until finish()
    w.finish();
  }
  io::SafetensorsFile f(path);
  REQUIRE(f.tensors().size() == 2);
  REQUIRE(f.metadata().at("format") == "pt");
  REQUIRE(f.find("a")->shape == std::vector<std::int64_t>{2, 3});
  std::vector<float> got(6);
  f.read("a", 0, 6, 1, got.data());
  for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(std::memcmp(&got[i], &a[i], 4) == 0);
  f.read("a", 1, 2, 3, got.data());  // a column: elements 1 and 4
  REQUIRE(got[0] == -2.25f);
  REQUIRE(std::memcmp(&got[1], &a[4], 4) == 0);
  f.read("b", 0, 3, 1, got.data());
  REQUIRE((got[0] == 1.0f && got[1] == -2.0f && got[2] == 0.15625f));
  // F16 through a hand-made file
  const std::string hpath = (dir / "h.safetensors").string();
  {
    std::string header = R"({"h":{"dtype":"F16","shape":[5],"data_offsets":[0,10]}})";
    header.append((8 - header.size() % 8) % 8, ' ');
    std::ofstream o(hpath, std::ios::binary);
    const std::uint64_t n = header.size();
    o.write(reinterpret_cast<const char*>(&n), 8);
    o << header;
    o.write(reinterpret_cast<const char*>(h), sizeof(h));
  }
  io::SafetensorsFile hf(hpath);
  hf.read("h", 0, 5, 1, got.data());
  REQUIRE((got[0] == 1.0f && got[1] == -2.0f && got[2] == 0x1p-14f && got[3] == 0x1p-24f && std::isinf(got[4])));
  // an unfinished writer leaves nothing behind
  { io::SafetensorsWriter w((dir / "cut.safetensors").string(), {{"a", "F32", {1}, 0, 0}}); }
  REQUIRE_FALSE(std::filesystem::exists(dir / "cut.safetensors"));
  REQUIRE_FALSE(std::filesystem::exists(dir / "cut.safetensors.tmp"));
  REQUIRE_THROWS_WITH(io::SafetensorsFile((dir / "none.safetensors").string()),
                      Catch::Matchers::Contains("cannot open safetensors file"));
  REQUIRE(parse_bytes("5GB") == 5000000000ULL);
  REQUIRE(parse_bytes("300KB") == 300000ULL);
  REQUIRE(parse_bytes("1234") == 1234ULL);
  REQUIRE_THROWS_WITH(parse_bytes("lots"), "'lots' is not a size (e.g. 5GB, 500MB or a byte count)");
}
