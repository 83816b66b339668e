#pragma once
/// \file
/// \brief bfloat16 as 16 bits: the upper half of an fp32, rounded to nearest even. One definition
/// for the cross-site compression and the bf16 matrix multiplies, on hosts and GPUs alike.

#include <Kokkos_Core.hpp>
#include <cstdint>
#include <cstring>
#include <type_traits>

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

/// x rounded to bf16 into d: as its 16 bits (W = std::uint16_t: cuBLAS and oneDNN read those) or
/// as its value in an fp32 (W = float: a host sgemm's bf16 operands). For the kernels that write
/// a bf16 copy of what they produce instead of the fp32 value.
template <class W, class T> KOKKOS_INLINE_FUNCTION void store_rounded(W& d, T x) {
  if constexpr (std::is_same_v<W, std::uint16_t>) d = to_bf16(float(x));
  else d = W(round_bf16(float(x)));
}

}  // namespace tapestry::kernels
