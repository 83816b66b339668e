#pragma once
/// \file
/// \brief Element-wise kernels: GELU (tanh approximation, as GPT-2), the residual add, and bf16
/// storage of activations.

#include <cstdint>

#include "tapestry/core/views.hpp"

namespace tapestry::kernels {

/// out (n) = gelu(inp).
template <class T> void gelu_forward(const ExecSpace& exec, View1<T> out, In1<T> inp);
/// dinp (n) = gelu'(inp) * dout (overwritten; may alias dout).
template <class T>
void gelu_backward(const ExecSpace& exec, View1<T> dinp, In1<T> inp, In1<T> dout);

/// gelu_forward and gelu_backward writing their output only as bf16 (std::uint16_t: its bits;
/// float: bf16 values), rounded from the fp32 value those kernels write (bitwise their output
/// rounded): the copy a bf16 product reads.
template <class W> void gelu_forward_bf16(const ExecSpace& exec, W* out, In1<float> inp);
template <class W> void gelu_backward_bf16(const ExecSpace& exec, W* dinp, In1<float> inp, In1<float> dout);

/// out (n) = a + b.
template <class T> void residual_forward(const ExecSpace& exec, View1<T> out, In1<T> a, In1<T> b);
/// da += dout; db += dout.
template <class T>
void residual_backward(const ExecSpace& exec, View1<T> da, View1<T> db, In1<T> dout);

/// bf16 storage of activations: out (n) = x rounded to nearest even, as bf16 bits.
void store_bf16(const ExecSpace& exec, Kokkos::View<std::uint16_t*, Layout, MemSpace> out, In1<float> x);
/// out (n) = the fp32 values of the bf16 bits in `in` (exact).
void load_bf16(const ExecSpace& exec, View1<float> out, Kokkos::View<const std::uint16_t*, Layout, MemSpace> in);

}  // namespace tapestry::kernels
