#include "tapestry/kernels/elementwise.hpp"

#include <stdexcept>

#include "tapestry/kernels/bf16.hpp"
#include "tapestry/kernels/math.hpp"
#include "sink.hpp"

namespace tapestry::kernels {

namespace {
constexpr double kGeluScale = 0.7978845608028654;  // sqrt(2 / pi)

/// tanh through one exp: several times faster than libm's tanhf on hosts; exact limits at +-inf.
template <class T> KOKKOS_INLINE_FUNCTION T fast_tanh(T u) {
  return T(1) - T(2) / (math::vexp(T(2) * u) + T(1));
}
/// gelu(x) and gelu'(x) (s = sqrt(2 / pi)): one definition for the fp32 and bf16 outputs.
template <class T> KOKKOS_INLINE_FUNCTION T gelu_value(T x, T s) {
  return T(0.5) * x * (T(1) + fast_tanh(s * (x + T(0.044715) * x * x * x)));
}
template <class T> KOKKOS_INLINE_FUNCTION T gelu_slope(T x, T s) {
  const T u = s * (x + T(0.044715) * x * x * x);
  const T th = fast_tanh(u);
  const T sech2 = T(1) - th * th;
  return T(0.5) * (T(1) + th) + T(0.5) * x * sech2 * s * (T(1) + T(3 * 0.044715) * x * x);
}

/// gelu forward and backward through a sink (sink.hpp): the fp32 output, or only its bf16 copy.
template <class T, class Out> void gelu_forward_impl(const ExecSpace& exec, Out out, In1<T> inp) {
  const T s = T(kGeluScale);
  Kokkos::parallel_for(
      "tapestry::gelu_forward", Kokkos::RangePolicy<ExecSpace>(exec, 0, inp.extent(0)),
      KOKKOS_LAMBDA(std::size_t i) { out(i, gelu_value(inp(i), s)); });
}
template <class T, class Out> void gelu_backward_impl(const ExecSpace& exec, Out dinp, In1<T> inp, In1<T> dout) {
  const T s = T(kGeluScale);
  Kokkos::parallel_for(
      "tapestry::gelu_backward", Kokkos::RangePolicy<ExecSpace>(exec, 0, inp.extent(0)),
      KOKKOS_LAMBDA(std::size_t i) { dinp(i, gelu_slope(inp(i), s) * dout(i)); });
}
}  // namespace

template <class T> void gelu_forward(const ExecSpace& exec, View1<T> out, In1<T> inp) {
  gelu_forward_impl<T>(exec, detail::Floats<T>{out.data(), 0}, inp);
}
template <class W> void gelu_forward_bf16(const ExecSpace& exec, W* out, In1<float> inp) {
  gelu_forward_impl<float>(exec, detail::Rounded<W>{out, 0}, inp);
}
template <class T> void gelu_backward(const ExecSpace& exec, View1<T> dinp, In1<T> inp, In1<T> dout) {
  gelu_backward_impl<T>(exec, detail::Floats<T>{dinp.data(), 0}, inp, dout);
}
template <class W> void gelu_backward_bf16(const ExecSpace& exec, W* dinp, In1<float> inp, In1<float> dout) {
  gelu_backward_impl<float>(exec, detail::Rounded<W>{dinp, 0}, inp, dout);
}

template <class T> void residual_forward(const ExecSpace& exec, View1<T> out, In1<T> a, In1<T> b) {
  Kokkos::parallel_for(
      "tapestry::residual_forward", Kokkos::RangePolicy<ExecSpace>(exec, 0, a.extent(0)),
      KOKKOS_LAMBDA(std::size_t i) { out(i) = a(i) + b(i); });
}

template <class T>
void residual_backward(const ExecSpace& exec, View1<T> da, View1<T> db, In1<T> dout) {
  Kokkos::parallel_for(
      "tapestry::residual_backward", Kokkos::RangePolicy<ExecSpace>(exec, 0, dout.extent(0)),
      KOKKOS_LAMBDA(std::size_t i) {
        da(i) += dout(i);
        db(i) += dout(i);
      });
}

void store_bf16(const ExecSpace& exec, Kokkos::View<std::uint16_t*, Layout, MemSpace> out, In1<float> x) {
  if (out.extent(0) != x.extent(0)) throw std::invalid_argument("tapestry::store_bf16: extents differ");
  Kokkos::parallel_for(
      "tapestry::store_bf16", Kokkos::RangePolicy<ExecSpace>(exec, 0, x.extent(0)),
      KOKKOS_LAMBDA(std::size_t i) { out(i) = to_bf16(x(i)); });
}

void load_bf16(const ExecSpace& exec, View1<float> out, Kokkos::View<const std::uint16_t*, Layout, MemSpace> in) {
  if (out.extent(0) != in.extent(0)) throw std::invalid_argument("tapestry::load_bf16: extents differ");
  Kokkos::parallel_for(
      "tapestry::load_bf16", Kokkos::RangePolicy<ExecSpace>(exec, 0, in.extent(0)),
      KOKKOS_LAMBDA(std::size_t i) { out(i) = from_bf16(in(i)); });
}

#define TAPESTRY_INSTANTIATE(T)                                                          \
  template void gelu_forward<T>(const ExecSpace&, View1<T>, In1<T>);                    \
  template void gelu_backward<T>(const ExecSpace&, View1<T>, In1<T>, In1<T>);           \
  template void residual_forward<T>(const ExecSpace&, View1<T>, In1<T>, In1<T>);        \
  template void residual_backward<T>(const ExecSpace&, View1<T>, View1<T>, In1<T>);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE
#define TAPESTRY_INSTANTIATE(W)                                                     \
  template void gelu_forward_bf16<W>(const ExecSpace&, W*, In1<float>);            \
  template void gelu_backward_bf16<W>(const ExecSpace&, W*, In1<float>, In1<float>);
TAPESTRY_INSTANTIATE(std::uint16_t)
TAPESTRY_INSTANTIATE(float)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
