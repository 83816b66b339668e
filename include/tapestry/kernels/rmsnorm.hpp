#pragma once
/// \file
/// \brief RMSNorm (Llama) over the last dimension, and per-head RMSNorm of q and k (QK-norm, as
/// OLMo 2 / Qwen3 / Apertus), saving 1/rms for the backward pass. Statistics in the kernel's type.

#include "tapestry/core/views.hpp"
#include "tapestry/kernels/layernorm.hpp"

namespace tapestry::kernels {

/// out (N, C) = inp * rstd * weight, rstd (N) = 1 / sqrt(mean_c(inp^2) + eps), saved.
template <class T>
void rmsnorm_forward(const ExecSpace& exec, View2<T> out, View1<T> rstd, In2<T> inp, In1<T> weight,
                     double eps = 1e-5);

/// rmsnorm_forward writing `out` (N x C, contiguous) only as bf16 (as layernorm_forward_bf16).
template <class W>
void rmsnorm_forward_bf16(const ExecSpace& exec, W* out, View1<float> rstd, In2<float> inp, In1<float> weight,
                          double eps = 1e-5);
/// dinp (N, C) += d/dinp; dweight (C) += d/dweight (a fixed reduction order, no atomics; scratch
/// as layernorm_backward's, norm_scratch_rows(N) x (2 C)).
template <class T>
void rmsnorm_backward(const ExecSpace& exec, View2<T> dinp, View1<T> dweight, In2<T> dout, In2<T> inp,
                      In1<T> weight, In1<T> rstd, View2<T> scratch);

/// QK-norm: columns [c0, c0 + nh*hd) of each row of inp (N, W) are nh heads of hd values; each head
/// is RMS-normalised on its own and scaled by weight (hd), shared by the heads:
/// out(n, c0 + h*hd + i) = inp(n, c0 + h*hd + i) * rstd(n, h) * weight(i). Other columns of out are
/// not touched. rstd (N, nh) saved. out may not alias inp.
template <class T>
void head_rmsnorm_forward(const ExecSpace& exec, View2<T> out, View2<T> rstd, In2<T> inp, In1<T> weight,
                          int c0, int nh, double eps = 1e-6);

/// Columns [c0, c0 + nh*hd) of dinp (N, W) are overwritten with d/dinp (other columns untouched;
/// dinp may alias dout); dweight (hd) += d/dweight, summed over rows and heads in a fixed order.
template <class T>
void head_rmsnorm_backward(const ExecSpace& exec, View2<T> dinp, View1<T> dweight, In2<T> dout, In2<T> inp,
                           In1<T> weight, In2<T> rstd, int c0, int nh);

}  // namespace tapestry::kernels
