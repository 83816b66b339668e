#pragma once
/// \file
/// \brief Lossy encodings for cross-site gradient traffic, with error feedback: bf16 (round to
/// nearest even), int8 and int4 with one fp32 scale per block of values, and top-k (the largest
/// magnitudes of every block, as bf16 values with their index in the block).

#include <cstdint>
#include <string>

#include "tapestry/core/views.hpp"

namespace tapestry::kernels {

enum class Compression { none, bf16, int8, int4, topk };
constexpr int kInt8Block = 256;  ///< int8: values per fp32 scale (levels -127..127)
constexpr int kInt4Block = 64;   ///< int4: values per fp32 scale (levels -7..7, two values a byte)
constexpr int kTopkBlock = 256;  ///< top-k: the block a kept value's one-byte index points into
constexpr int kTopkKeep = 8;     ///< top-k: values kept per block (3.125%), 3 bytes each

/// "none", "bf16", "int8", "int4" or "topk" (anything else is treated as an error by validate()).
Compression parse_compression(const std::string& name);
/// The name parse_compression() reads.
const char* compression_name(Compression c);

/// Bytes of the encoding of n values.
std::size_t compressed_bytes(Compression c, std::size_t n);

/// Encodes v (n) + residual into `out` (compressed_bytes(c, n) bytes), and sets
/// residual = (v + residual) - decode(out): the error fed back into the next call.
void compress_with_feedback(const ExecSpace& exec, Compression c, In1<float> v, View1<float> residual,
                            std::uint8_t* out);

/// acc (n) += decode(in), times `scale` unless it is 1 (then exactly decode(in)).
void decompress_add(const ExecSpace& exec, Compression c, const std::uint8_t* in, View1<float> acc, float scale = 1);

}  // namespace tapestry::kernels
