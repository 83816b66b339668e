// Token datasets: llm.c token files (uint16, uint32) and Megatron indexed datasets (uint16, int32),
// written, read back, concatenated, and rejected when broken.
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "catch.hpp"
#include "temp_files.hpp"
#include "tapestry/core/error.hpp"
#include "tapestry/io/data_loader.hpp"
#include "tapestry/io/token_dataset.hpp"
#include "tapestry/io/token_file.hpp"

using namespace tapestry;
using namespace tapestry::io;
namespace fs = std::filesystem;
using tapestry::test::TempDir;
using tapestry::test::slurp;
using tapestry::test::spit;
using Catch::Matchers::Contains;

namespace {

using Docs = std::vector<std::vector<std::uint32_t>>;

void write_docs(const std::string& path, TokenFormat format, std::uint64_t vocab, const Docs& docs) {
  TokenDatasetWriter w(path, format, vocab);
  for (const auto& d : docs) w.add_document(d.data(), d.size());
  w.finish();
  REQUIRE(w.num_documents() == docs.size());
}

std::vector<std::uint32_t> read_all(const TokenDataset& ds) {
  std::vector<std::uint32_t> out(ds.num_tokens());
  ds.read(0, out.size(), out.data());
  return out;
}

std::vector<std::uint32_t> flatten(const Docs& docs) {
  std::vector<std::uint32_t> all;
  for (const auto& d : docs) all.insert(all.end(), d.begin(), d.end());
  return all;
}

/// Documents with an empty one, ids up to vocab - 1 (above 65535 when the vocabulary is larger).
Docs sample_docs(std::uint64_t vocab) {
  const auto top = std::uint32_t(vocab - 1);
  return {{1, 2, 3}, {}, {top, 0, 7, top / 2}, {5}, {9, 8}};
}

template <class T>
void poke(std::string& bytes, std::size_t at, T v) {
  std::memcpy(&bytes[at], &v, sizeof(T));
}
}  // namespace

TEST_CASE("token datasets round-trip in every format and width", "[dataset]") {
  TempDir dir("dataset_roundtrip");
  struct Case {
    TokenFormat format;
    std::uint64_t vocab;
    const char* name;
    int width;
  };
  const Case cases[] = {{TokenFormat::llmc, 65536, "llm.c uint16", 2},
                        {TokenFormat::llmc, 1 << 17, "llm.c uint32", 4},
                        {TokenFormat::megatron, 50257, "megatron uint16", 2},
                        {TokenFormat::megatron, 1 << 17, "megatron int32", 4}};
  for (const Case& c : cases) {
    INFO(c.name);
    const bool megatron = c.format == TokenFormat::megatron;
    const std::string path = dir / (megatron ? "m" : "l.bin");
    const Docs docs = sample_docs(c.vocab);
    const auto all = flatten(docs);
    write_docs(path, c.format, c.vocab, docs);
    REQUIRE(!fs::exists(path + ".tmp"));
    REQUIRE(!fs::exists(path + ".bin.tmp"));
    REQUIRE(!fs::exists(path + ".idx.tmp"));
    if (!megatron) {
      REQUIRE(fs::file_size(path) == 1024 + std::uint64_t(c.width) * all.size());
      const std::string bytes = slurp(path);
      std::int32_t h[3];
      std::memcpy(h, bytes.data(), sizeof(h));
      REQUIRE(h[0] == (c.width == 2 ? 20240520 : 20240801));
      REQUIRE(h[1] == (c.width == 2 ? 1 : 7));
      REQUIRE(h[2] == std::int32_t(all.size()));
    } else {
      REQUIRE(fs::file_size(path + ".bin") == std::uint64_t(c.width) * all.size());
      REQUIRE(fs::file_size(path + ".idx") == 34 + 12 * docs.size() + 8 * (docs.size() + 1));
    }

    const std::vector<std::string> names =
        megatron ? std::vector<std::string>{path, path + ".bin", path + ".idx"} : std::vector<std::string>{path};
    for (const auto& name : names) {
      const auto ds = TokenDataset::open(name);
      REQUIRE(ds->format_name() == c.name);
      REQUIRE(ds->token_bytes() == c.width);
      REQUIRE(ds->num_tokens() == all.size());
      REQUIRE(read_all(*ds) == all);
      if (megatron) {
        REQUIRE(ds->path() == path);
        REQUIRE(ds->num_documents() == docs.size());
        std::uint64_t start = 0;
        for (std::size_t d = 0; d <= docs.size(); ++d) {
          REQUIRE(ds->document_start(d) == start);
          if (d < docs.size()) start += docs[d].size();
        }
      } else {
        REQUIRE(ds->num_documents() == 1);
        REQUIRE(ds->document_start(0) == 0);
        REQUIRE(ds->document_start(1) == all.size());
      }
      REQUIRE_THROWS_AS(ds->document_start(ds->num_documents() + 1), Error);
      // Ranges across document boundaries (through the empty document), and empty ranges.
      for (std::uint64_t off = 0; off <= all.size(); ++off)
        for (std::uint64_t n = 0; off + n <= all.size(); ++n) {
          std::vector<std::uint32_t> got(n + 1, 0xdeadbeef);
          ds->read(off, n, got.data());
          REQUIRE(std::vector<std::uint32_t>(got.begin(), got.begin() + std::ptrdiff_t(n)) ==
                  std::vector<std::uint32_t>(all.begin() + std::ptrdiff_t(off), all.begin() + std::ptrdiff_t(off + n)));
          REQUIRE(got[n] == 0xdeadbeef);
        }
    }
  }
}

TEST_CASE("empty token datasets open", "[dataset]") {
  TempDir dir("dataset_empty");
  write_docs(dir / "l.bin", TokenFormat::llmc, 256, {});
  write_docs(dir / "m", TokenFormat::megatron, 256, {});
  write_docs(dir / "e", TokenFormat::megatron, 256, {{}, {}});
  const auto l = TokenDataset::open(dir / "l.bin");
  REQUIRE(l->num_tokens() == 0);
  REQUIRE(l->num_documents() == 1);
  l->read(0, 0, nullptr);
  const auto m = TokenDataset::open(dir / "m");
  REQUIRE(m->num_tokens() == 0);
  REQUIRE(m->num_documents() == 0);
  REQUIRE(m->document_start(0) == 0);
  REQUIRE_THROWS_WITH(m->read(0, 1, nullptr), Contains("past the end"));
  const auto e = TokenDataset::open(dir / "e");
  REQUIRE(e->num_documents() == 2);
  REQUIRE(e->document_start(1) == 0);
}

TEST_CASE("concatenating parts equals writing everything at once", "[dataset]") {
  TempDir dir("dataset_concat");
  const Docs p0 = {{1, 2, 3}, {4}}, p1 = {{}, {9, 9}, {70000}}, p2 = {{5, 6, 7, 8}};
  Docs whole = p0;
  whole.insert(whole.end(), p1.begin(), p1.end());
  whole.insert(whole.end(), p2.begin(), p2.end());
  for (const std::uint64_t vocab : {std::uint64_t(1) << 17, std::uint64_t(1) << 16}) {
    Docs a = p0, b = p1, c = p2, all = whole;
    if (vocab == 65536)
      for (Docs* ds : {&a, &b, &c, &all})
        for (auto& d : *ds)
          for (auto& t : d) t %= 65536;
    for (const TokenFormat format : {TokenFormat::llmc, TokenFormat::megatron}) {
      const bool megatron = format == TokenFormat::megatron;
      INFO((megatron ? "megatron" : "llm.c") << " vocab " << vocab);
      const std::string ext = megatron ? "" : ".bin";
      write_docs(dir / ("a" + ext), format, vocab, a);
      write_docs(dir / ("b" + ext), format, vocab, b);
      write_docs(dir / ("c" + ext), format, vocab, c);
      write_docs(dir / ("whole" + ext), format, vocab, all);
      concat_token_datasets({dir / ("a" + ext), dir / ("b" + ext), dir / ("c" + ext)}, dir / ("cat" + ext), format,
                            vocab);
      if (megatron) {
        REQUIRE(slurp(dir / "cat.bin") == slurp(dir / "whole.bin"));
        REQUIRE(slurp(dir / "cat.idx") == slurp(dir / "whole.idx"));
        REQUIRE(TokenDataset::open(dir / "cat")->num_documents() == whole.size());
      } else {
        REQUIRE(slurp(dir / "cat.bin") == slurp(dir / "whole.bin"));
      }
      REQUIRE(dir.entries() == (megatron ? 10u : 5u));  // no temporaries left
      for (const auto& f : fs::directory_iterator(dir.path)) fs::remove(f.path());
    }
  }

  write_docs(dir / "u16", TokenFormat::megatron, 1000, {{1}});
  write_docs(dir / "i32", TokenFormat::megatron, 100000, {{1}});
  write_docs(dir / "l16.bin", TokenFormat::llmc, 1000, {{1}});
  REQUIRE_THROWS_WITH(concat_token_datasets({dir / "u16", dir / "i32"}, dir / "out", TokenFormat::megatron, 1000),
                      Contains("2-byte tokens) and"));
  REQUIRE_THROWS_WITH(concat_token_datasets({dir / "u16", dir / "l16.bin"}, dir / "out", TokenFormat::megatron, 1000),
                      Contains("(llm.c uint16) into a Megatron dataset"));
  REQUIRE_THROWS_WITH(concat_token_datasets({dir / "u16"}, dir / "out", TokenFormat::megatron, 100000),
                      Contains("calls for 4-byte tokens"));
  write_docs(dir / "i32b", TokenFormat::megatron, 100000, {{1, 99999}});
  REQUIRE_THROWS_WITH(concat_token_datasets({dir / "i32", dir / "i32b"}, dir / "out", TokenFormat::megatron, 70000),
                      Contains("holds token id 99999 (as uint32) at token 1, not below vocab_size 70000"));
  REQUIRE(!fs::exists(dir / "out.bin"));
  REQUIRE(!fs::exists(dir / "out.bin.tmp"));
}

TEST_CASE("broken token datasets are one clear error each", "[dataset][bad-input]") {
  TempDir dir("dataset_bad");
  const Docs docs = {{1, 2, 3}, {}, {4, 5}};
  write_docs(dir / "good", TokenFormat::megatron, 1000, docs);
  write_docs(dir / "big", TokenFormat::megatron, 100000, docs);
  const std::string idx = slurp(dir / "good.idx"), bin = slurp(dir / "good.bin");
  const auto variant = [&](const std::string& name, const std::string& i, const std::string& b) {
    spit(dir / (name + ".idx"), i);
    spit(dir / (name + ".bin"), b);
    return dir / name;
  };
  std::string bad;

  REQUIRE_THROWS_WITH(TokenDataset::open(variant("short", idx.substr(0, 20), bin)), Contains("truncated"));
  REQUIRE_THROWS_WITH(TokenDataset::open(variant("cut", idx.substr(0, idx.size() - 8), bin)),
                      Contains("is 94 bytes but its header promises 3 sequences and 4 document indices (102 bytes)"));
  bad = idx;
  bad[0] = 'X';
  REQUIRE_THROWS_WITH(TokenDataset::open(variant("magic", bad, bin)), Contains("bad magic"));
  bad = idx;
  poke<std::uint64_t>(bad, 9, 2);
  REQUIRE_THROWS_WITH(TokenDataset::open(variant("version", bad, bin)), Contains("unsupported version 2"));
  bad = idx;
  bad[17] = 7;
  REQUIRE_THROWS_WITH(TokenDataset::open(variant("dtype", bad, bin)), Contains("unsupported dtype code 7"));
  REQUIRE_THROWS_WITH(TokenDataset::open(variant("binsize", idx, bin + "xx")),
                      Contains("'" + dir / "binsize.bin" + "' is 12 bytes but its index"));
  bad = idx;
  poke<std::int64_t>(bad, 34 + 12 + 8 * 2, 4);  // sequence 2 should start at byte 6
  REQUIRE_THROWS_WITH(TokenDataset::open(variant("pointer", bad, bin)), Contains("sequence 2 starts at byte 4"));
  bad = idx;
  poke<std::int32_t>(bad, 34 + 4, -1);
  REQUIRE_THROWS_WITH(TokenDataset::open(variant("length", bad, bin)), Contains("negative length"));
  bad = idx;
  poke<std::int64_t>(bad, 34 + 12 * 3 + 8 * 3, 2);  // the last document index must be S = 3
  REQUIRE_THROWS_WITH(TokenDataset::open(variant("docidx", bad, bin)), Contains("last document index is 2"));
  bad = idx;
  poke<std::int64_t>(bad, 34 + 12 * 3 + 8 * 1, 2);
  poke<std::int64_t>(bad, 34 + 12 * 3 + 8 * 2, 1);  // 0 2 1 3: not monotone
  REQUIRE_THROWS_WITH(TokenDataset::open(variant("order", bad, bin)), Contains("document_indices[2] = 1"));

  fs::remove(dir / "good.idx");
  REQUIRE_THROWS_WITH(TokenDataset::open(dir / "good"), Contains("has no index"));
  REQUIRE_THROWS_WITH(TokenDataset::open(dir / "good.idx"), Contains("cannot open"));
  REQUIRE_THROWS_WITH(TokenDataset::open(dir / "good.bin"), Contains("needs its index"));
  REQUIRE_THROWS_WITH(TokenDataset::open(dir / "nothing"), Contains("no such file"));

  const auto ds = TokenDataset::open(dir / "big");
  std::vector<std::uint32_t> out(8);
  REQUIRE_THROWS_WITH(ds->read(4, 2, out.data()), Contains("past the end"));
  REQUIRE_THROWS_WITH(ds->read(6, 0, out.data()), Contains("past the end"));
  REQUIRE_THROWS_WITH(ds->read(~std::uint64_t(0), 2, out.data()), Contains("past the end"));
  std::string neg = slurp(dir / "big.bin");
  poke<std::int32_t>(neg, 4 * 3, -7);
  spit(dir / "neg.bin", neg);
  fs::copy_file(dir / "big.idx", dir / "neg.idx");
  REQUIRE_THROWS_WITH(TokenDataset::open(dir / "neg")->read(0, 5, out.data()), Contains("negative token id -7 at token 3"));

  // llm.c files
  write_docs(dir / "l.bin", TokenFormat::llmc, 1 << 17, docs);
  const std::string l = slurp(dir / "l.bin");
  spit(dir / "lcut.bin", l.substr(0, l.size() - 4));
  REQUIRE_THROWS_WITH(TokenDataset::open(dir / "lcut.bin"), Contains("header promises 5 tokens"));
  spit(dir / "lshort.bin", l.substr(0, 100));
  REQUIRE_THROWS_WITH(TokenDataset::open(dir / "lshort.bin"), Contains("truncated"));
  bad = l;
  poke<std::int32_t>(bad, 4, 1);  // the uint32 format is version 7
  spit(dir / "lversion.bin", bad);
  REQUIRE_THROWS_WITH(TokenDataset::open(dir / "lversion.bin"), Contains("unsupported version 1"));
}

TEST_CASE("the writer rejects ids outside the vocabulary and keeps going", "[dataset][bad-input]") {
  TempDir dir("dataset_vocab");
  for (const TokenFormat format : {TokenFormat::llmc, TokenFormat::megatron}) {
    const std::string path = dir / (format == TokenFormat::llmc ? "l.bin" : "m");
    TokenDatasetWriter w(path, format, 1000);
    const std::vector<std::uint32_t> good = {1, 999}, bad = {1, 1000};
    w.add_document(good.data(), good.size());
    REQUIRE_THROWS_WITH(w.add_document(bad.data(), bad.size()),
                        Contains("token id 1000 at position 1 of document 1 is >= vocab_size 1000"));
    w.add_document(good.data(), good.size());
    w.finish();
    REQUIRE(w.num_tokens() == 4);
    REQUIRE_THROWS_WITH(w.add_document(good.data(), good.size()), Contains("already finished"));
    REQUIRE(read_all(*TokenDataset::open(path)) == std::vector<std::uint32_t>{1, 999, 1, 999});
  }
  REQUIRE_THROWS_WITH(TokenDatasetWriter(dir / "m2", TokenFormat::megatron, std::uint64_t(1) << 32),
                      Contains("int32 token ids"));
  REQUIRE_THROWS_WITH(TokenDatasetWriter(dir / "no/such/dir/x.bin", TokenFormat::llmc, 10), Contains("cannot create"));
}

TEST_CASE("a writer dropped before finish() leaves nothing behind", "[dataset]") {
  TempDir dir("dataset_drop");
  write_docs(dir / "keep.bin", TokenFormat::llmc, 100, {{1, 2}});
  const std::string before = slurp(dir / "keep.bin");
  const std::vector<std::uint32_t> ids = {3, 4, 5};
  {
    TokenDatasetWriter l(dir / "l.bin", TokenFormat::llmc, 100);
    TokenDatasetWriter m(dir / "m", TokenFormat::megatron, 100);
    TokenDatasetWriter k(dir / "keep.bin", TokenFormat::llmc, 100);  // would replace keep.bin
    for (TokenDatasetWriter* w : {&l, &m, &k}) w->add_document(ids.data(), ids.size());
    REQUIRE(fs::exists(dir / "l.bin.tmp"));
    REQUIRE(fs::exists(dir / "m.bin.tmp"));
  }
  REQUIRE(dir.entries() == 1);
  REQUIRE(slurp(dir / "keep.bin") == before);
}

TEST_CASE("llm.c uint16 files agree with write_token_file and read_token_file", "[dataset]") {
  TempDir dir("dataset_tokenfile");
  std::vector<std::uint16_t> toks(5000);
  for (std::size_t i = 0; i < toks.size(); ++i) toks[i] = std::uint16_t((i * 7919) % 65536);
  write_token_file(dir / "old.bin", toks);
  const auto ds = TokenDataset::open(dir / "old.bin");
  REQUIRE(ds->format_name() == "llm.c uint16");
  REQUIRE(read_all(*ds) == std::vector<std::uint32_t>(toks.begin(), toks.end()));

  const std::vector<std::uint32_t> wide(toks.begin(), toks.end());
  write_docs(dir / "new.bin", TokenFormat::llmc, 65536, {wide});
  REQUIRE(slurp(dir / "new.bin") == slurp(dir / "old.bin"));
  REQUIRE(read_token_file(dir / "new.bin") == toks);
}

TEST_CASE("Megatron documents of several sequences read and concatenate", "[dataset]") {
  // As Megatron's IndexedDatasetBuilder.add_document(tensor, lengths=[2, 1]) writes them:
  // document 0 = sequences 0 and 1, document 1 = sequence 2.
  TempDir dir("dataset_multiseq");
  const std::vector<std::int32_t> lengths = {2, 1, 3};
  const std::vector<std::int64_t> pointers = {0, 4, 6}, doc_idx = {0, 2, 3};
  const std::vector<std::uint16_t> tokens = {10, 11, 12, 20, 21, 22};
  std::string idx = std::string("MMIDIDX\0\0", 9);
  const auto put = [&](const void* p, std::size_t n) { idx.append(static_cast<const char*>(p), n); };
  const std::uint64_t version = 1, S = 3, D = 3;
  const std::uint8_t code = 8;
  put(&version, 8), put(&code, 1), put(&S, 8), put(&D, 8);
  put(lengths.data(), 12), put(pointers.data(), 24), put(doc_idx.data(), 24);
  spit(dir / "x.idx", idx);
  spit(dir / "x.bin", std::string(reinterpret_cast<const char*>(tokens.data()), 12));
  const auto ds = TokenDataset::open(dir / "x");
  REQUIRE(ds->num_documents() == 2);
  REQUIRE(ds->document_start(1) == 3);
  REQUIRE(ds->document_start(2) == 6);

  concat_token_datasets({dir / "x", dir / "x"}, dir / "y", TokenFormat::megatron, 100);
  const auto y = TokenDataset::open(dir / "y");
  REQUIRE(y->num_documents() == 4);
  std::vector<std::uint64_t> starts;
  for (std::uint64_t d = 0; d <= 4; ++d) starts.push_back(y->document_start(d));
  REQUIRE(starts == std::vector<std::uint64_t>{0, 3, 6, 9, 12});
  REQUIRE(read_all(*y) == std::vector<std::uint32_t>{10, 11, 12, 20, 21, 22, 10, 11, 12, 20, 21, 22});
  REQUIRE(fs::file_size(dir / "y.idx") == 34 + 12 * 6 + 8 * 5);
}

TEST_CASE("a Megatron dataset of more than 2^31 tokens: 64-bit offsets in the reader and the loader", "[dataset][large]") {
  // A sparse .bin of 2^31 + 100 uint16 tokens (4 GiB on paper, a few KiB on disk) in two
  // documents, with ids 1..10 written at token 2^31 + 10; the .idx written here by hand from the
  // format's description.
  TempDir dir("dataset_large");
  const std::uint64_t N = (std::uint64_t(1) << 31) + 100, L0 = std::uint64_t(1) << 30, L1 = N - L0;
  const std::string prefix = dir / "big";
  {
    std::ofstream idx(prefix + ".idx", std::ios::binary);
    idx.write("MMIDIDX\0\0", 9);
    auto put = [&](auto v) { idx.write(reinterpret_cast<const char*>(&v), sizeof(v)); };
    put(std::uint64_t(1));
    put(std::uint8_t(8));  // uint16
    put(std::uint64_t(2));  // sequences
    put(std::uint64_t(3));  // document indices: 0, 1, 2
    put(std::int32_t(L0)), put(std::int32_t(L1));
    put(std::int64_t(0)), put(std::int64_t(2 * L0));
    put(std::int64_t(0)), put(std::int64_t(1)), put(std::int64_t(2));
    REQUIRE(bool(idx));
  }
  {
    std::ofstream bin(prefix + ".bin", std::ios::binary);
    REQUIRE(bool(bin));
  }
  fs::resize_file(prefix + ".bin", 2 * N);  // sparse
  {
    std::fstream bin(prefix + ".bin", std::ios::binary | std::ios::in | std::ios::out);
    bin.seekp(std::streamoff(2 * ((std::uint64_t(1) << 31) + 10)));
    for (std::uint16_t v = 1; v <= 10; ++v) bin.write(reinterpret_cast<const char*>(&v), 2);
    REQUIRE(bool(bin));
  }
  const auto ds = TokenDataset::open(prefix);
  REQUIRE(ds->num_tokens() == N);
  REQUIRE(ds->num_documents() == 2);
  REQUIRE(ds->document_start(1) == L0);
  REQUIRE(ds->document_start(2) == N);
  std::vector<std::uint32_t> got(12);
  ds->read((std::uint64_t(1) << 31) + 9, 12, got.data());
  REQUIRE(got == std::vector<std::uint32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0});
  REQUIRE_THROWS_WITH(ds->read(N - 5, 6, got.data()), Contains("past the end"));
  // The loader: a position beyond 2^31 tokens, in order; and a shuffle over its 2^28 samples.
  DataLoader::Options o;
  o.batch_size = 1, o.seq_len = 8, o.vocab_size = 65536;
  DataLoader seq({DataSource{1.0, prefix}}, o);
  seq.set_position({0, std::int64_t(std::uint64_t(1) << 31) + 8, 0});
  std::vector<int> in, tg;
  seq.next_batch(in, tg);
  REQUIRE(in == std::vector<int>{0, 0, 1, 2, 3, 4, 5, 6});
  REQUIRE(tg == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7});
  o.shuffle = true;
  DataLoader shuffled({DataSource{1.0, prefix}}, o);
  shuffled.set_position({-1, std::int64_t(N / 8) - 3, 0});  // the last samples of epoch 0, then epoch 1
  for (int i = 0; i < 6; ++i) shuffled.next_batch(in, tg);
  REQUIRE(shuffled.error().empty());
  REQUIRE(shuffled.position().offset == std::int64_t(N / 8) + 3);
}
