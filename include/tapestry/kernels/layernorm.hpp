#pragma once
/// \file
/// \brief LayerNorm over the last dimension, saving mean and 1/std for the backward pass.

#include <cstddef>

#include "tapestry/core/views.hpp"

namespace tapestry::kernels {

/// out (N, C) = (inp - mean) * rstd * weight + bias; mean (N), rstd (N) saved.
template <class T>
void layernorm_forward(const ExecSpace& exec, View2<T> out, View1<T> mean, View1<T> rstd,
                       In2<T> inp, In1<T> weight, In1<T> bias, double eps = 1e-5);

/// layernorm_forward writing `out` (N x C, contiguous) only as bf16, W = std::uint16_t (its bits)
/// or float (bf16 values): bitwise the fp32 output rounded (store_rounded). For the copy a bf16
/// product reads.
template <class W>
void layernorm_forward_bf16(const ExecSpace& exec, W* out, View1<float> mean, View1<float> rstd, In2<float> inp,
                            In1<float> weight, In1<float> bias, double eps = 1e-5);

/// The norms' parameter gradients sum over the rows in two passes: over blocks of kNormRowBlock
/// rows (a block's columns over a team's threads), then over the blocks, in a fixed order (no
/// atomics: deterministic). The partial sums need a scratch of norm_scratch_rows(N) x (2 C) values
/// of the kernel's type.
inline constexpr int kNormRowBlock = 16;
inline std::size_t norm_scratch_rows(std::size_t rows) { return (rows + kNormRowBlock - 1) / kNormRowBlock; }

/// dinp (N, C) += d/dinp; dweight (C) += ; dbias (C) += . scratch: see kNormRowBlock.
template <class T>
void layernorm_backward(const ExecSpace& exec, View2<T> dinp, View1<T> dweight, View1<T> dbias,
                        In2<T> dout, In2<T> inp, In1<T> weight, In1<T> mean, In1<T> rstd, View2<T> scratch);

}  // namespace tapestry::kernels
