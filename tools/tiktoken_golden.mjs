#!/usr/bin/env node
// Golden ids for the byte-level BPE tokenizer, from OpenAI's tiktoken (npm package `tiktoken`).
//
//   node tools/tiktoken_golden.mjs ENCODING NODE_MODULES TEXT OUT_DIR
//   e.g. node tools/tiktoken_golden.mjs cl100k_base /tmp/npmcheck/node_modules \
//            tests/data/multilingual.txt /tmp/tok/tiktoken
//
// ENCODING is gpt2 or cl100k_base (any encoding tiktoken ships works). Writes OUT_DIR/ENCODING/:
//   tokenizer.json  the encoding converted to a Hugging Face tokenizer.json the way transformers
//                   converts tiktoken files: vocab = byte-level (GPT-2 bytes_to_unicode) token
//                   strings -> rank; merges = for each token of two or more bytes, every split into
//                   two pieces that are both tokens, ordered by the token's rank, then by the pieces'
//                   ranks; ignore_merges true; pre_tokenizer Sequence[Split(Regex pat_str,
//                   Isolated), ByteLevel(add_prefix_space false, use_regex false)]; decoder
//                   ByteLevel; added_tokens = the special tokens. gpt2 writes merges as "a b"
//                   strings, other encodings as [a, b] pairs, so both forms get tested.
//   golden.txt      ids made by tiktoken's own encoder, encode(doc, "all") (special tokens written
//                   in the text are recognised), space-separated, one document per line: line 1 is
//                   the whole file as one text; then one line per paragraph, the file split on every
//                   "\n\n" left to right (JavaScript's text.split("\n\n"), empty paragraphs give
//                   empty lines). tests/tokenizer_golden.cpp splits the same way.
// Neither file is committed; TAPESTRY_TIKTOKEN_DIR=OUT_DIR points the tests at them.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const [encName, nodeModules, textPath, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error("usage: tiktoken_golden.mjs ENCODING NODE_MODULES TEXT OUT_DIR");
  process.exit(2);
}
const require = createRequire(path.resolve(nodeModules) + "/");
const { get_encoding } = require(path.resolve(nodeModules, "tiktoken"));
const spec = JSON.parse(fs.readFileSync(path.resolve(nodeModules, "tiktoken/encoders", encName + ".json"), "utf8"));

// bpe_ranks: "! <rank> tok tok ..." with base64 tokens; "!" then a number sets the next token's rank.
const ranks = new Map();  // token bytes as a latin1 string -> rank
{
  const parts = spec.bpe_ranks.split(/\s+/).filter((s) => s.length > 0);
  let rank = 0;
  for (let i = 0; i < parts.length; ++i) {
    if (parts[i] === "!") {
      rank = Number(parts[++i]);
      continue;
    }
    ranks.set(Buffer.from(parts[i], "base64").toString("latin1"), rank++);
  }
}

// GPT-2's bytes_to_unicode.
const byteChar = new Array(256);
{
  let next = 256;
  for (let b = 0; b < 256; ++b) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    byteChar[b] = String.fromCodePoint(printable ? b : next++);
  }
}
const mapped = (latin1) => Array.from(latin1, (c) => byteChar[c.charCodeAt(0)]).join("");

const byRank = [...ranks.entries()].sort((a, b) => a[1] - b[1]);
const vocab = {};
const merges = [];
for (const [tok, rank] of byRank) {
  vocab[mapped(tok)] = rank;
  if (tok.length < 2) continue;
  const local = [];
  for (let i = 1; i < tok.length; ++i) {
    const l = tok.slice(0, i), r = tok.slice(i);
    if (ranks.has(l) && ranks.has(r)) local.push([ranks.get(l), ranks.get(r), l, r]);
  }
  local.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  for (const [, , l, r] of local) merges.push(encName === "gpt2" ? mapped(l) + " " + mapped(r) : [mapped(l), mapped(r)]);
}

const added = Object.entries(spec.special_tokens).map(([content, id]) => ({
  id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
}));
const tokenizer = {
  version: "1.0",
  truncation: null,
  padding: null,
  added_tokens: added,
  normalizer: null,
  pre_tokenizer: {
    type: "Sequence",
    pretokenizers: [
      { type: "Split", pattern: { Regex: spec.pat_str }, behavior: "Isolated", invert: false },
      { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  },
  post_processor: null,
  decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
  model: {
    type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
    fuse_unk: false, byte_fallback: false, ignore_merges: true, vocab, merges,
  },
};

const dir = path.join(outDir, encName);
fs.mkdirSync(dir, { recursive: true });
fs.writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify(tokenizer));

const enc = get_encoding(encName);
const text = fs.readFileSync(textPath, "utf8");
const docs = [text, ...text.split("\n\n")];
const lines = docs.map((d) => Array.from(enc.encode(d, "all")).join(" "));
fs.writeFileSync(path.join(dir, "golden.txt"), lines.join("\n") + "\n");
enc.free();
console.log(`${dir}: ${byRank.length} tokens, ${merges.length} merges, ${added.length} special; ` +
            `${docs.length} documents, ${lines[0].split(" ").length} ids in the whole text`);
