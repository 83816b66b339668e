#pragma once
/// \file
/// \brief Element-wise kernels: GELU (tanh approximation, as GPT-2) and the residual add.

#include "tapestry/core/views.hpp"

namespace tapestry::kernels {

/// out (n) = gelu(inp).
template <class T> void gelu_forward(const ExecSpace& exec, View1<T> out, In1<T> inp);
/// dinp (n) = gelu'(inp) * dout (overwritten; may alias dout).
template <class T>
void gelu_backward(const ExecSpace& exec, View1<T> dinp, In1<T> inp, In1<T> dout);

/// out (n) = a + b.
template <class T> void residual_forward(const ExecSpace& exec, View1<T> out, In1<T> a, In1<T> b);
/// da += dout; db += dout.
template <class T>
void residual_backward(const ExecSpace& exec, View1<T> da, View1<T> db, In1<T> dout);

}  // namespace tapestry::kernels
