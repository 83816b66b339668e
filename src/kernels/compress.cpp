#include "tapestry/kernels/compress.hpp"

#include "tapestry/kernels/bf16.hpp"
#include "tapestry/kernels/math.hpp"

namespace tapestry::kernels {

Compression parse_compression(const std::string& name) {
  if (name == "bf16") return Compression::bf16;
  if (name == "int8") return Compression::int8;
  return Compression::none;
}

std::size_t compressed_bytes(Compression c, std::size_t n) {
  switch (c) {
    case Compression::none: return 4 * n;
    case Compression::bf16: return 2 * n;
    case Compression::int8: return 4 * ((n + kInt8Block - 1) / kInt8Block) + n;
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
  } else {
    const std::size_t blocks = (n + kInt8Block - 1) / kInt8Block;
    float* scales = reinterpret_cast<float*>(out);
    std::int8_t* q = reinterpret_cast<std::int8_t*>(out + 4 * blocks);
    Kokkos::parallel_for(
        "tapestry::compress_int8", Kokkos::RangePolicy<ExecSpace>(exec, 0, blocks), KOKKOS_LAMBDA(std::size_t b) {
          const std::size_t lo = b * kInt8Block, hi = lo + kInt8Block < n ? lo + kInt8Block : n;
          float amax = 0;
          for (std::size_t i = lo; i < hi; ++i) {
            const float x = v(i) + residual(i);
            amax = x < 0 ? (-x > amax ? -x : amax) : (x > amax ? x : amax);
          }
          const float scale = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
          scales[b] = scale;
          for (std::size_t i = lo; i < hi; ++i) {
            const float x = v(i) + residual(i);
            float r = x * inv;
            r = r < 0 ? r - 0.5f : r + 0.5f;  // round half away from zero
            const int k = int(r) > 127 ? 127 : (int(r) < -127 ? -127 : int(r));
            q[i] = std::int8_t(k);
            residual(i) = x - float(k) * scale;
          }
        });
  }
}

void decompress_add(const ExecSpace& exec, Compression c, const std::uint8_t* in, View1<float> acc) {
  const std::size_t n = acc.extent(0);
  if (c == Compression::none) {
    const float* p = reinterpret_cast<const float*>(in);
    Kokkos::parallel_for(
        "tapestry::decompress_none", Kokkos::RangePolicy<ExecSpace>(exec, 0, n),
        KOKKOS_LAMBDA(std::size_t i) { acc(i) += p[i]; });
  } else if (c == Compression::bf16) {
    const std::uint16_t* p = reinterpret_cast<const std::uint16_t*>(in);
    Kokkos::parallel_for(
        "tapestry::decompress_bf16", Kokkos::RangePolicy<ExecSpace>(exec, 0, n),
        KOKKOS_LAMBDA(std::size_t i) { acc(i) += from_bf16(p[i]); });
  } else {
    const std::size_t blocks = (n + kInt8Block - 1) / kInt8Block;
    const float* scales = reinterpret_cast<const float*>(in);
    const std::int8_t* q = reinterpret_cast<const std::int8_t*>(in + 4 * blocks);
    Kokkos::parallel_for(
        "tapestry::decompress_int8", Kokkos::RangePolicy<ExecSpace>(exec, 0, n),
        KOKKOS_LAMBDA(std::size_t i) { acc(i) += float(q[i]) * scales[i / kInt8Block]; });
  }
}

}  // namespace tapestry::kernels
