// A small driver for the token dataset reader and writer, used by tests/megatron_interop.sh:
//   token_dataset_tool write FORMAT VOCAB OUT < ids     (FORMAT: llmc | megatron; one document a line)
//   token_dataset_tool dump PATH                        (one document a line, ids separated by spaces)
//   token_dataset_tool concat FORMAT VOCAB OUT PART...
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "tapestry/core/error.hpp"
#include "tapestry/io/token_dataset.hpp"

using namespace tapestry;
using namespace tapestry::io;

namespace {

TokenFormat parse_format(const std::string& s) {
  if (s == "llmc") return TokenFormat::llmc;
  if (s == "megatron") return TokenFormat::megatron;
  throw Error("unknown format '" + s + "' (expected llmc or megatron)");
}

std::uint64_t parse_u64(const std::string& s, const std::string& what) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  require(!s.empty() && s[0] != '-' && *end == '\0' && errno == 0, "bad " + what + " '" + s + "'");
  return v;
}

int write(const std::string& format, const std::string& vocab, const std::string& out) {
  TokenDatasetWriter w(out, parse_format(format), parse_u64(vocab, "vocab size"));
  std::string line, word;
  std::vector<std::uint32_t> ids;
  for (std::uint64_t lineno = 1; std::getline(std::cin, line); ++lineno) {
    ids.clear();
    std::istringstream words(line);
    while (words >> word) {
      const std::uint64_t id = parse_u64(word, "token id on line " + std::to_string(lineno));
      require(id <= 0xffffffffu, "token id " + word + " on line " + std::to_string(lineno) + " exceeds uint32");
      ids.push_back(std::uint32_t(id));
    }
    w.add_document(ids.data(), ids.size());
  }
  w.finish();
  std::cerr << "wrote " << w.num_documents() << " documents, " << w.num_tokens() << " tokens to " << out << "\n";
  return 0;
}

int dump(const std::string& path) {
  const auto ds = TokenDataset::open(path);
  std::cerr << ds->format_name() << ": " << ds->num_documents() << " documents, " << ds->num_tokens() << " tokens\n";
  std::vector<std::uint32_t> buf;
  std::string line;
  for (std::uint64_t d = 0; d < ds->num_documents(); ++d) {
    const std::uint64_t a = ds->document_start(d), b = ds->document_start(d + 1);
    buf.resize(b - a);
    ds->read(a, b - a, buf.data());
    line.clear();
    for (std::size_t i = 0; i < buf.size(); ++i) {
      if (i) line += ' ';
      line += std::to_string(buf[i]);
    }
    std::cout << line << '\n';
  }
  return std::cout.flush() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> a(argv + 1, argv + argc);
  try {
    if (a.size() == 4 && a[0] == "write") return write(a[1], a[2], a[3]);
    if (a.size() == 2 && a[0] == "dump") return dump(a[1]);
    if (a.size() >= 5 && a[0] == "concat") {
      concat_token_datasets({a.begin() + 4, a.end()}, a[3], parse_format(a[1]), parse_u64(a[2], "vocab size"));
      return 0;
    }
    std::cerr << "usage: token_dataset_tool write llmc|megatron VOCAB OUT < ids\n"
                 "       token_dataset_tool dump PATH\n"
                 "       token_dataset_tool concat llmc|megatron VOCAB OUT PART...\n";
    return 2;
  } catch (const Error& e) {
    std::cerr << "token_dataset_tool: error: " << e.what() << "\n";
    return 1;
  }
}
