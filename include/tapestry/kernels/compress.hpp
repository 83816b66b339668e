#pragma once
/// \file
/// \brief Lossy encodings for cross-site gradient traffic, with error feedback: bf16 (round to
/// nearest even) and int8 with one fp32 scale per block of values.

#include <cstdint>
#include <string>

#include "tapestry/core/views.hpp"

namespace tapestry::kernels {

enum class Compression { none, bf16, int8 };
constexpr int kInt8Block = 256;  ///< values per fp32 scale

/// "none", "bf16" or "int8" (anything else is treated as an error by validate()).
Compression parse_compression(const std::string& name);

/// Bytes of the encoding of n values.
std::size_t compressed_bytes(Compression c, std::size_t n);

/// Encodes v (n) + residual into `out` (compressed_bytes(c, n) bytes), and sets
/// residual = (v + residual) - decode(out): the error fed back into the next call.
void compress_with_feedback(const ExecSpace& exec, Compression c, In1<float> v, View1<float> residual,
                            std::uint8_t* out);

/// acc (n) += decode(in).
void decompress_add(const ExecSpace& exec, Compression c, const std::uint8_t* in, View1<float> acc);

}  // namespace tapestry::kernels
