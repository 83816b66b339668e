#pragma once
/// \file
/// \brief LayerNorm over the last dimension, saving mean and 1/std for the backward pass.

#include "tapestry/core/views.hpp"

namespace tapestry::kernels {

/// out (N, C) = (inp - mean) * rstd * weight + bias; mean (N), rstd (N) saved.
template <class T>
void layernorm_forward(const ExecSpace& exec, View2<T> out, View1<T> mean, View1<T> rstd,
                       In2<T> inp, In1<T> weight, In1<T> bias, double eps = 1e-5);

/// dinp (N, C) += d/dinp; dweight (C) += ; dbias (C) += .
template <class T>
void layernorm_backward(const ExecSpace& exec, View2<T> dinp, View1<T> dweight, View1<T> dbias,
                        In2<T> dout, In2<T> inp, In1<T> weight, In1<T> mean, In1<T> rstd);

}  // namespace tapestry::kernels
