#include "tapestry/kernels/compress.hpp"

#include "tapestry/kernels/bf16.hpp"
#include "tapestry/kernels/math.hpp"

namespace tapestry::kernels {

Compression parse_compression(const std::string& name) {
  for (auto c : {Compression::bf16, Compression::int8, Compression::int4, Compression::topk})
    if (name == compression_name(c)) return c;
  return Compression::none;
}

const char* compression_name(Compression c) {
  switch (c) {
    case Compression::none: return "none";
    case Compression::bf16: return "bf16";
    case Compression::int8: return "int8";
    case Compression::int4: return "int4";
    case Compression::topk: return "topk";
  }
  return "none";
}

namespace {
std::size_t blocks_of(std::size_t n, std::size_t block) { return (n + block - 1) / block; }

/// max |v + residual| over [lo, hi).
KOKKOS_INLINE_FUNCTION float block_amax(const In1<float>& v, const View1<float>& residual, std::size_t lo, std::size_t hi) {
  float amax = 0;
  for (std::size_t i = lo; i < hi; ++i) {
    const float x = v(i) + residual(i);
    amax = x < 0 ? (-x > amax ? -x : amax) : (x > amax ? x : amax);
  }
  return amax;
}

/// x * inv rounded half away from zero, clamped to [-levels, levels].
KOKKOS_INLINE_FUNCTION int quantize(float x, float inv, int levels) {
  float r = x * inv;
  r = r < 0 ? r - 0.5f : r + 0.5f;
  const int k = int(r);
  return k > levels ? levels : (k < -levels ? -levels : k);
}
}  // namespace

std::size_t compressed_bytes(Compression c, std::size_t n) {
  switch (c) {
    case Compression::none: return 4 * n;
    case Compression::bf16: return 2 * n;
    case Compression::int8: return 4 * blocks_of(n, kInt8Block) + n;
    case Compression::int4: return 4 * blocks_of(n, kInt4Block) + (n + 1) / 2;
    case Compression::topk: return 3 * std::size_t(kTopkKeep) * blocks_of(n, kTopkBlock);
  }
  return 0;
}

void compress_with_feedback(const ExecSpace& exec, Compression c, In1<float> v, View1<float> residual,
                            std::uint8_t* out) {
  const std::size_t n = v.extent(0);
  if (c == Compression::none) {
    float* o = reinterpret_cast<float*>(out);
    Kokkos::parallel_for(
        "tapestry::compress_none", Kokkos::RangePolicy<ExecSpace>(exec, 0, n),
        KOKKOS_LAMBDA(std::size_t i) { o[i] = v(i) + residual(i), residual(i) = 0; });
  } else if (c == Compression::bf16) {
    std::uint16_t* o = reinterpret_cast<std::uint16_t*>(out);
    Kokkos::parallel_for(
        "tapestry::compress_bf16", Kokkos::RangePolicy<ExecSpace>(exec, 0, n), KOKKOS_LAMBDA(std::size_t i) {
          const float x = v(i) + residual(i);
          o[i] = to_bf16(x);
          residual(i) = x - from_bf16(o[i]);
        });
  } else if (c == Compression::int4) {
    // Levels -7..7 stored as 1..15 in a nibble, value i in byte i / 2 (low nibble first). Blocks
    // hold an even number of values, so no two blocks share a byte.
    const std::size_t blocks = blocks_of(n, kInt4Block);
    float* scales = reinterpret_cast<float*>(out);
    std::uint8_t* q = out + 4 * blocks;
    Kokkos::parallel_for(
        "tapestry::compress_int4", Kokkos::RangePolicy<ExecSpace>(exec, 0, blocks), KOKKOS_LAMBDA(std::size_t b) {
          const std::size_t lo = b * kInt4Block, hi = lo + kInt4Block < n ? lo + kInt4Block : n;
          const float amax = block_amax(v, residual, lo, hi);
          const float scale = amax / 7.0f, inv = amax > 0 ? 7.0f / amax : 0.0f;
          scales[b] = scale;
          for (std::size_t i = lo; i < hi; i += 2) {
            std::uint8_t byte = 0;
            for (std::size_t j = i; j < i + 2 && j < hi; ++j) {
              const float x = v(j) + residual(j);
              const int k = quantize(x, inv, 7);
              byte = std::uint8_t(byte | (std::uint8_t(k + 8) << (4 * (j - i))));
              residual(j) = x - float(k) * scale;
            }
            q[i / 2] = byte;
          }
        });
  } else if (c == Compression::topk) {
    // Per block: the kTopkKeep largest |v + residual| (ties: the lowest index), as bf16 values
    // followed by their one-byte indices; slots past a short last block hold index 0, value 0.
    const std::size_t blocks = blocks_of(n, kTopkBlock);
    std::uint16_t* vals = reinterpret_cast<std::uint16_t*>(out);
    std::uint8_t* idx = out + 2 * std::size_t(kTopkKeep) * blocks;
    Kokkos::parallel_for(
        "tapestry::compress_topk", Kokkos::RangePolicy<ExecSpace>(exec, 0, blocks), KOKKOS_LAMBDA(std::size_t b) {
          const std::size_t lo = b * kTopkBlock, hi = lo + kTopkBlock < n ? lo + kTopkBlock : n;
          for (std::size_t i = lo; i < hi; ++i) residual(i) += v(i);  // everything not sent stays behind
          float floor_mag = 3.4e38f;  // magnitude of the last one taken
          std::size_t floor_at = 0;   // and its index: the next is strictly after it in (|x| desc, i asc)
          for (int s = 0; s < kTopkKeep; ++s) {
            std::size_t best = hi;
            float best_mag = -1;
            for (std::size_t i = lo; i < hi; ++i) {
              const float m = residual(i) < 0 ? -residual(i) : residual(i);
              const bool after = m < floor_mag || (m == floor_mag && i > floor_at);
              if (after && m > best_mag) best = i, best_mag = m;
            }
            const std::size_t slot = b * kTopkKeep + std::size_t(s);
            if (best == hi) {
              vals[slot] = 0, idx[slot] = 0;
              continue;
            }
            floor_mag = best_mag, floor_at = best;
            const std::uint16_t h = to_bf16(residual(best));
            vals[slot] = h, idx[slot] = std::uint8_t(best - lo);
          }
          for (int s = 0; s < kTopkKeep; ++s) {  // after the search, which reads the residuals
            const std::size_t slot = b * kTopkKeep + std::size_t(s);
            residual(lo + idx[slot]) -= from_bf16(vals[slot]);
          }
        });
  } else {
    const std::size_t blocks = blocks_of(n, kInt8Block);
    float* scales = reinterpret_cast<float*>(out);
    std::int8_t* q = reinterpret_cast<std::int8_t*>(out + 4 * blocks);
    Kokkos::parallel_for(
        "tapestry::compress_int8", Kokkos::RangePolicy<ExecSpace>(exec, 0, blocks), KOKKOS_LAMBDA(std::size_t b) {
          const std::size_t lo = b * kInt8Block, hi = lo + kInt8Block < n ? lo + kInt8Block : n;
          const float amax = block_amax(v, residual, lo, hi);
          const float scale = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
          scales[b] = scale;
          for (std::size_t i = lo; i < hi; ++i) {
            const float x = v(i) + residual(i);
            const int k = quantize(x, inv, 127);
            q[i] = std::int8_t(k);
            residual(i) = x - float(k) * scale;
          }
        });
  }
}

void decompress_add(const ExecSpace& exec, Compression c, const std::uint8_t* in, View1<float> acc, float scale) {
  const std::size_t n = acc.extent(0);
  const bool scaled = scale != 1.0f;
  if (c == Compression::none) {
    const float* p = reinterpret_cast<const float*>(in);
    Kokkos::parallel_for(
        "tapestry::decompress_none", Kokkos::RangePolicy<ExecSpace>(exec, 0, n),
        KOKKOS_LAMBDA(std::size_t i) { acc(i) += scaled ? scale * p[i] : p[i]; });
  } else if (c == Compression::bf16) {
    const std::uint16_t* p = reinterpret_cast<const std::uint16_t*>(in);
    Kokkos::parallel_for(
        "tapestry::decompress_bf16", Kokkos::RangePolicy<ExecSpace>(exec, 0, n),
        KOKKOS_LAMBDA(std::size_t i) { acc(i) += scaled ? scale * from_bf16(p[i]) : from_bf16(p[i]); });
  } else if (c == Compression::int4) {
    const std::size_t blocks = blocks_of(n, kInt4Block);
    const float* scales = reinterpret_cast<const float*>(in);
    const std::uint8_t* q = in + 4 * blocks;
    Kokkos::parallel_for(
        "tapestry::decompress_int4", Kokkos::RangePolicy<ExecSpace>(exec, 0, n), KOKKOS_LAMBDA(std::size_t i) {
          const int k = int((q[i / 2] >> (4 * (i % 2))) & 0xF) - 8;
          const float x = float(k) * scales[i / kInt4Block];
          acc(i) += scaled ? scale * x : x;
        });
  } else if (c == Compression::topk) {
    const std::size_t blocks = blocks_of(n, kTopkBlock);
    const std::uint16_t* vals = reinterpret_cast<const std::uint16_t*>(in);
    const std::uint8_t* idx = in + 2 * std::size_t(kTopkKeep) * blocks;
    Kokkos::parallel_for(
        "tapestry::decompress_topk", Kokkos::RangePolicy<ExecSpace>(exec, 0, blocks), KOKKOS_LAMBDA(std::size_t b) {
          for (std::size_t s = b * kTopkKeep; s < (b + 1) * kTopkKeep; ++s) {
            const float x = from_bf16(vals[s]);
            acc(b * kTopkBlock + idx[s]) += scaled ? scale * x : x;
          }
        });
  } else {
    const std::size_t blocks = blocks_of(n, kInt8Block);
    const float* scales = reinterpret_cast<const float*>(in);
    const std::int8_t* q = reinterpret_cast<const std::int8_t*>(in + 4 * blocks);
    Kokkos::parallel_for(
        "tapestry::decompress_int8", Kokkos::RangePolicy<ExecSpace>(exec, 0, n),
        KOKKOS_LAMBDA(std::size_t i) {
          const float x = float(q[i]) * scales[i / kInt8Block];
          acc(i) += scaled ? scale * x : x;
        });
  }
}

}  // namespace tapestry::kernels
