#pragma once
/// \file
/// \brief bfloat16 as 16 bits: the upper half of an fp32, rounded to nearest even. One definition
/// for the cross-site compression and the bf16 matrix multiplies, on hosts and GPUs alike.

#include <Kokkos_Core.hpp>
#include <cstdint>
#include <cstring>

namespace tapestry::kernels {

/// fp32 -> bf16 bits, round to nearest even; inf and NaN are truncated (a NaN stays a NaN).
KOKKOS_INLINE_FUNCTION std::uint16_t to_bf16(float x) {
  std::uint32_t u;
  memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return std::uint16_t(u >> 16);
  u += 0x7fffu + ((u >> 16) & 1u);
  return std::uint16_t(u >> 16);
}

/// bf16 bits -> the fp32 of the same value (exact).
KOKKOS_INLINE_FUNCTION float from_bf16(std::uint16_t h) {
  const std::uint32_t u = std::uint32_t(h) << 16;
  float x;
  memcpy(&x, &u, 4);
  return x;
}

/// x rounded to the nearest bf16, as an fp32.
KOKKOS_INLINE_FUNCTION float round_bf16(float x) { return from_bf16(to_bf16(x)); }

}  // namespace tapestry::kernels
