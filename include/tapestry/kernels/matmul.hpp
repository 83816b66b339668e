#pragma once
/// \file
/// \brief Linear layer y = x W^T + b through the vendor BLAS.

#include "tapestry/core/views.hpp"
#include "tapestry/kernels/blas.hpp"

namespace tapestry::kernels {

/// out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC). An empty `bias` means no bias.
template <class T>
void matmul_forward(const Blas& blas, View2<T> out, In2<T> inp, In2<T> weight, In1<T> bias);

/// dinp (N, C) = dout @ weight (overwritten; skipped when empty);
/// dweight (OC, C) += dout^T @ inp; dbias (OC) += column sums of dout (skipped when empty).
template <class T>
void matmul_backward(const Blas& blas, View2<T> dinp, View2<T> dweight, View1<T> dbias,
                     In2<T> dout, In2<T> inp, In2<T> weight);

}  // namespace tapestry::kernels
