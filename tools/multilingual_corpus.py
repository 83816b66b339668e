#!/usr/bin/env python3
"""Builds a multilingual JSON-lines corpus from the translations installed on this machine
(gettext .mo files under /usr/share/locale: every language the system's programs are translated
into, e.g. hi, ta, th, ar, zh_CN, de, ru), one document per .mo file, for tokenizer and
`data prepare` benchmarks (tools/bench_tokenize.sh). Real text, not a repeated sample.

  tools/multilingual_corpus.py OUT.jsonl [--mb 20] [--root /usr/share/locale]
"""
import argparse
import json
import os
import struct
import sys


def translations(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 28:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    end = "<" if magic == 0x950412DE else ">" if magic == 0xDE120495 else None
    if end is None:
        return []
    _, n, _, trans = struct.unpack(end + "4I", data[4:20])
    out = []
    for i in range(n):
        length, off = struct.unpack(end + "2I", data[trans + 8 * i:trans + 8 * i + 8])
        s = data[off:off + length].split(b"\0")[0]
        if not s or s.startswith(b"Project-Id-Version"):
            continue
        try:
            out.append(s.decode("utf-8"))
        except UnicodeDecodeError:
            pass
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--mb", type=float, default=20)
    ap.add_argument("--root", default="/usr/share/locale")
    a = ap.parse_args()
    files = []
    for dirpath, _, names in os.walk(a.root):
        files += [os.path.join(dirpath, n) for n in names if n.endswith(".mo")]
    files.sort(key=lambda p: (os.path.basename(p), p))  # one program in every language, then the next
    total, docs, langs = 0, 0, set()
    with open(a.out, "w", encoding="utf-8") as out:
        for p in files:
            t = translations(p)
            if not t:
                continue
            lang = os.path.relpath(p, a.root).split(os.sep)[0]
            line = json.dumps({"text": "\n".join(t), "lang": lang}, ensure_ascii=False) + "\n"
            out.write(line)
            total += len(line.encode("utf-8"))
            docs += 1
            langs.add(lang)
            if total >= a.mb * 1e6:
                break
    print(f"multilingual_corpus: {a.out}: {total / 1e6:.1f} MB, {docs} documents, {len(langs)} languages")
    return 0 if docs else 1


if __name__ == "__main__":
    sys.exit(main())
