#pragma once
/// \file
/// \brief MLP activations beside GELU: SwiGLU (Llama: silu(gate) * up) and xIELU (Apertus: a
/// trainable piecewise activation with two scalar parameters per layer).

#include "tapestry/core/views.hpp"

namespace tapestry::kernels {

/// gu (N, 2F) holds [gate | up] per row; out (N, F) = silu(gate) * up, silu(x) = x / (1 + e^-x).
template <class T> void swiglu_forward(const ExecSpace& exec, View2<T> out, In2<T> gu);
/// dgu (N, 2F) overwritten with d/dgate | d/dup given dout (N, F).
template <class T> void swiglu_backward(const ExecSpace& exec, View2<T> dgu, In2<T> gu, In2<T> dout);

/// xIELU (Huang et al. 2024, as in transformers' XIELUActivation), params (2) = raw (alpha_p, alpha_n):
///   a_p = softplus(params(0)), a_n = beta + softplus(params(1)),
///   y = x > 0 ? a_p x^2 + beta x : a_n (expm1(min(x, eps)) - x) + beta x.
template <class T>
void xielu_forward(const ExecSpace& exec, View1<T> out, In1<T> inp, In1<T> params, double beta = 0.5,
                   double eps = -1e-6);
/// dinp (n) overwritten with dout * dy/dx (may alias dout); dparams (2) += d/d(raw params), summed
/// in a fixed order (deterministic on every backend).
template <class T>
void xielu_backward(const ExecSpace& exec, View1<T> dinp, View1<T> dparams, In1<T> inp, In1<T> dout,
                    In1<T> params, double beta = 0.5, double eps = -1e-6);

/// swiglu_forward, swiglu_backward, xielu_forward and xielu_backward writing their output (out,
/// dgu, dinp) only as bf16, W = std::uint16_t (its bits) or float (bf16 values), contiguous and
/// shaped as the fp32 output: bitwise that output rounded (store_rounded). For the copies bf16
/// products read. xielu's dparams accumulate in fp32 as before.
template <class W> void swiglu_forward_bf16(const ExecSpace& exec, W* out, In2<float> gu);
template <class W> void swiglu_backward_bf16(const ExecSpace& exec, W* dgu, In2<float> gu, In2<float> dout);
template <class W>
void xielu_forward_bf16(const ExecSpace& exec, W* out, In1<float> inp, In1<float> params, double beta = 0.5,
                        double eps = -1e-6);
template <class W>
void xielu_backward_bf16(const ExecSpace& exec, W* dinp, View1<float> dparams, In1<float> inp, In1<float> dout,
                         In1<float> params, double beta = 0.5, double eps = -1e-6);

/// Raw parameter value whose softplus is `value` (log(expm1(value))): xIELU's initialisation
/// (alpha_p = 0.8 -> raw softplus^-1(0.8); alpha_n = 0.8 -> raw softplus^-1(0.8 - beta)).
double softplus_inverse(double value);

}  // namespace tapestry::kernels
