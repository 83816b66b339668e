// Checks a tokenizer against ids made by another implementation (tiktoken, spm_encode).
//
//   tokenizer_golden TOKENIZER TEXT GOLDEN
//       GOLDEN as tools/tiktoken_golden.mjs writes it: line 1 the ids of the whole TEXT, then one
//       line per paragraph (TEXT split on every "\n\n", left to right). Every document must encode
//       to exactly those ids and decode back to itself. Prints "tokenizer_golden: N ids match".
//   tokenizer_golden --encode-lines TOKENIZER TEXT
//       Prints the ids of each line of TEXT (without its '\n'), space-separated, one line each, as
//       `spm_encode --output_format=id` does; tests/spm_golden.sh diffs the two.
//   tokenizer_golden --bench TOKENIZER TEXT MB
//       Encodes TEXT repeated to about MB megabytes, single thread, as one text and paragraph by
//       paragraph ("\n\n"), and prints the throughput of each.
//
// TOKENIZER is anything load_tokenizer accepts. Exit status 0 on success, 1 on a mismatch, 2 on a
// usage or input error.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "tapestry/core/error.hpp"
#include "tapestry/io/tokenizer.hpp"

using tapestry::io::Tokenizer;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  tapestry::require(bool(f), "cannot open '" + path + "'");
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

std::vector<std::string> split(const std::string& s, const std::string& sep) {
  std::vector<std::string> out;
  std::size_t b = 0;
  for (std::size_t e; (e = s.find(sep, b)) != std::string::npos; b = e + sep.size()) out.push_back(s.substr(b, e - b));
  out.push_back(s.substr(b));
  return out;
}

std::string join(const std::vector<std::uint32_t>& ids) {
  std::string s;
  for (std::size_t i = 0; i < ids.size(); ++i) s += (i ? " " : "") + std::to_string(ids[i]);
  return s;
}

/// The text the first `n` ids of `ids` decode to, for pointing at a mismatch.
std::string context(const Tokenizer& tok, const std::vector<std::uint32_t>& ids, std::size_t at) {
  const std::size_t b = at > 8 ? at - 8 : 0, e = std::min(ids.size(), at + 8);
  try {
    return tok.decode(std::vector<std::uint32_t>(ids.begin() + std::ptrdiff_t(b), ids.begin() + std::ptrdiff_t(e)));
  } catch (const tapestry::Error&) {
    return "?";
  }
}

int check_golden(const std::string& spec, const std::string& text_path, const std::string& golden_path) {
  const auto tok = tapestry::io::load_tokenizer(spec);
  const std::string text = slurp(text_path);
  std::vector<std::string> docs = split(text, "\n\n");
  docs.insert(docs.begin(), text);
  std::vector<std::string> lines = split(slurp(golden_path), "\n");
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  if (lines.size() != docs.size()) {
    std::printf("tokenizer_golden: %zu documents but %zu golden lines in %s\n", docs.size(), lines.size(),
                golden_path.c_str());
    return 1;
  }
  std::size_t matched = 0;
  for (std::size_t d = 0; d < docs.size(); ++d) {
    std::vector<std::uint32_t> want;
    std::istringstream in(lines[d]);
    for (std::uint32_t v; in >> v;) want.push_back(v);
    const auto got = tok->encode(docs[d]);
    std::size_t i = 0;
    while (i < want.size() && i < got.size() && want[i] == got[i]) ++i;
    if (i < want.size() || i < got.size()) {
      std::printf("tokenizer_golden: document %zu, id %zu of %zu: expected %s, got %s\n  expected text: [%s]\n"
                  "  got text:      [%s]\n",
                  d, i, want.size(), i < want.size() ? std::to_string(want[i]).c_str() : "end",
                  i < got.size() ? std::to_string(got[i]).c_str() : "end", context(*tok, want, i).c_str(),
                  context(*tok, got, i).c_str());
      return 1;
    }
    if (tok->decode(got) != docs[d]) {
      std::printf("tokenizer_golden: document %zu does not decode back to its text\n", d);
      return 1;
    }
    matched += got.size();
  }
  std::printf("tokenizer_golden: %zu ids match (%s)\n", matched, tok->describe().c_str());
  return 0;
}

int encode_lines(const std::string& spec, const std::string& text_path) {
  const auto tok = tapestry::io::load_tokenizer(spec);
  std::vector<std::string> lines = split(slurp(text_path), "\n");
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  std::string out;
  for (const auto& l : lines) out += join(tok->encode(l)) + "\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

int bench(const std::string& spec, const std::string& text_path, double mb) {
  const auto tok = tapestry::io::load_tokenizer(spec);
  const std::string unit = slurp(text_path);
  tapestry::require(!unit.empty(), "'" + text_path + "' is empty");
  std::string text;
  while (double(text.size()) < mb * 1e6) text += unit;
  auto time = [&](const char* how, const std::vector<std::string>& docs) {
    const auto t0 = std::chrono::steady_clock::now();
    std::size_t n = 0;
    for (const auto& d : docs) n += tok->encode(d).size();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("tokenizer_golden: %s: %.1f MB into %zu ids in %.2f s: %.1f MB/s (%s)\n", how,
                double(text.size()) / 1e6, n, s, double(text.size()) / 1e6 / s, tok->describe().c_str());
  };
  time("one text", {text});
  time("per paragraph", split(text, "\n\n"));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> a(argv + 1, argv + argc);
  try {
    if (a.size() == 3 && a[0] == "--encode-lines") return encode_lines(a[1], a[2]);
    if (a.size() == 4 && a[0] == "--bench") return bench(a[1], a[2], std::stod(a[3]));
    if (a.size() == 3 && a[0].rfind("--", 0) != 0) return check_golden(a[0], a[1], a[2]);
  } catch (const tapestry::Error& e) {
    std::fprintf(stderr, "tokenizer_golden: error: %s\n", e.what());
    return 2;
  }
  std::fprintf(stderr,
               "usage: tokenizer_golden TOKENIZER TEXT GOLDEN\n"
               "       tokenizer_golden --encode-lines TOKENIZER TEXT\n"
               "       tokenizer_golden --bench TOKENIZER TEXT MB\n");
  return 2;
}
