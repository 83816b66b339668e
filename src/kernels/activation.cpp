#include "tapestry/kernels/activation.hpp"

#include <cmath>
#include <stdexcept>

#include "tapestry/kernels/math.hpp"
#include "sink.hpp"
#include "team.hpp"

namespace tapestry::kernels {

namespace {
/// 1 / (1 + e^-x), branch-free: e^-x overflows to inf for very negative x and the quotient is then
/// exactly 0, as the limit (IEEE arithmetic, no trap).
template <class T> KOKKOS_INLINE_FUNCTION T sigmoid(T x) { return T(1) / (T(1) + math::vexp(-x)); }

/// log(1 + e^x) = max(x, 0) + log1p(e^-|x|), without overflow.
template <class T> KOKKOS_INLINE_FUNCTION T softplus(T x) {
  return (x > T(0) ? x : T(0)) + math::log1p(math::exp(x > T(0) ? -x : x));
}

/// Chunks of the xIELU parameter-gradient sum: a fixed count, so the summation order depends only
/// on n and the backend's team size.
constexpr int kXieluChunks = 256;

// ---------------------------------------------------------------- SwiGLU
template <class T, class Out> void swiglu_forward_impl(const ExecSpace& exec, Out out, int F, In2<T> gu) {
  const int N = int(gu.extent(0));
  // One team per row: contiguous columns in the inner loop (vectorizable on hosts).
  Kokkos::parallel_for(
      "tapestry::swiglu_forward", detail::team_per_row(exec, N), KOKKOS_LAMBDA(const detail::Member& m) {
        const int r = m.league_rank();
        const T* g = &gu(r, 0);
        const T* u = &gu(r, F);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(m, F), [&](int f) { out(r, f, g[f] * sigmoid(g[f]) * u[f]); });
      });
}

template <class T, class Out> void swiglu_backward_impl(const ExecSpace& exec, Out dgu, In2<T> gu, In2<T> dout) {
  const int N = int(dout.extent(0)), F = int(dout.extent(1));
  // d silu(g)/dg = sig (1 + g (1 - sig)). Both inputs are read before either output is written.
  Kokkos::parallel_for(
      "tapestry::swiglu_backward", detail::team_per_row(exec, N), KOKKOS_LAMBDA(const detail::Member& m) {
        const int r = m.league_rank();
        Kokkos::parallel_for(Kokkos::TeamThreadRange(m, F), [&](int f) {
          const T g = gu(r, f), u = gu(r, F + f), d = dout(r, f);
          const T sig = sigmoid(g);
          dgu(r, f, d * u * sig * (T(1) + g * (T(1) - sig)));
          dgu(r, F + f, d * g * sig);
        });
      });
}

// ---------------------------------------------------------------- xIELU
template <class T, class Out>
void xielu_forward_impl(const ExecSpace& exec, Out out, In1<T> inp, In1<T> params, double beta, double eps) {
  const T be = T(beta), ep = T(eps);
  Kokkos::parallel_for(
      "tapestry::xielu_forward", Kokkos::RangePolicy<ExecSpace>(exec, 0, inp.extent(0)), KOKKOS_LAMBDA(std::size_t i) {
        const T x = inp(i);
        if (x > T(0)) {
          out(i, softplus(params(0)) * x * x + be * x);
        } else {
          const T an = be + softplus(params(1));
          out(i, an * (math::expm1(x < ep ? x : ep) - x) + be * x);
        }
      });
}

template <class T, class Out>
void xielu_backward_impl(const ExecSpace& exec, Out dinp, View1<T> dparams, In1<T> inp, In1<T> dout, In1<T> params,
                         double beta, double eps) {
  const int n = int(inp.extent(0));
  if (n == 0) return;
  const T be = T(beta), ep = T(eps);
  const int chunk = (n + kXieluChunks - 1) / kXieluChunks, chunks = (n + chunk - 1) / chunk;
  // Per chunk: the partial sums of dy/d(a_p) dout and dy/d(a_n) dout, then dinp. Every element is read
  // (dout) and written (dinp) by one thread after the team's reductions, so dinp may alias dout.
  View2<T> partial(Kokkos::view_alloc(Kokkos::WithoutInitializing, "tapestry::xielu_partial"), 2, chunks);
  Kokkos::parallel_for(
      "tapestry::xielu_backward", detail::team_per_row(exec, chunks), KOKKOS_LAMBDA(const detail::Member& tm) {
        const int i0 = tm.league_rank() * chunk, len = n - i0 < chunk ? n - i0 : chunk;
        const T sp = detail::team_sum<T>(tm, len, [&](int j) {
          const T x = inp(i0 + j);
          return x > T(0) ? dout(i0 + j) * x * x : T(0);
        });
        const T sn = detail::team_sum<T>(tm, len, [&](int j) {
          const T x = inp(i0 + j);
          return x > T(0) ? T(0) : dout(i0 + j) * (math::expm1(x < ep ? x : ep) - x);
        });
        const T ap = softplus(params(0)), an = be + softplus(params(1));
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, len), [&](int j) {
          const T x = inp(i0 + j);
          const T dy = x > T(0) ? T(2) * ap * x + be : an * ((x < ep ? math::exp(x) : T(0)) - T(1)) + be;
          dinp(std::size_t(i0 + j), dout(i0 + j) * dy);
        });
        Kokkos::single(Kokkos::PerTeam(tm), [&] {
          partial(0, tm.league_rank()) = sp;
          partial(1, tm.league_rank()) = sn;
        });
      });
  // The chunks' sums in order, times softplus' = sigmoid of the raw parameters.
  Kokkos::parallel_for(
      "tapestry::xielu_backward_params", detail::team_per_row(exec, 2), KOKKOS_LAMBDA(const detail::Member& tm) {
        const int p = tm.league_rank();
        const T s = detail::team_sum<T>(tm, chunks, [&](int c) { return partial(p, c); });
        Kokkos::single(Kokkos::PerTeam(tm), [&] { dparams(p) += s * sigmoid(params(p)); });
      });
}
}  // namespace

template <class T> void swiglu_forward(const ExecSpace& exec, View2<T> out, In2<T> gu) {
  swiglu_forward_impl<T>(exec, detail::Floats<T>{out.data(), out.stride_0()}, int(out.extent(1)), gu);
}
template <class W> void swiglu_forward_bf16(const ExecSpace& exec, W* out, In2<float> gu) {
  const int F = int(gu.extent(1)) / 2;
  swiglu_forward_impl<float>(exec, detail::Rounded<W>{out, std::size_t(F)}, F, gu);
}

template <class T> void swiglu_backward(const ExecSpace& exec, View2<T> dgu, In2<T> gu, In2<T> dout) {
  swiglu_backward_impl<T>(exec, detail::Floats<T>{dgu.data(), dgu.stride_0()}, gu, dout);
}
template <class W> void swiglu_backward_bf16(const ExecSpace& exec, W* dgu, In2<float> gu, In2<float> dout) {
  swiglu_backward_impl<float>(exec, detail::Rounded<W>{dgu, gu.extent(1)}, gu, dout);
}

template <class T>
void xielu_forward(const ExecSpace& exec, View1<T> out, In1<T> inp, In1<T> params, double beta, double eps) {
  xielu_forward_impl<T>(exec, detail::Floats<T>{out.data(), 0}, inp, params, beta, eps);
}
template <class W>
void xielu_forward_bf16(const ExecSpace& exec, W* out, In1<float> inp, In1<float> params, double beta, double eps) {
  xielu_forward_impl<float>(exec, detail::Rounded<W>{out, 0}, inp, params, beta, eps);
}

template <class T>
void xielu_backward(const ExecSpace& exec, View1<T> dinp, View1<T> dparams, In1<T> inp, In1<T> dout, In1<T> params,
                    double beta, double eps) {
  xielu_backward_impl<T>(exec, detail::Floats<T>{dinp.data(), 0}, dparams, inp, dout, params, beta, eps);
}
template <class W>
void xielu_backward_bf16(const ExecSpace& exec, W* dinp, View1<float> dparams, In1<float> inp, In1<float> dout,
                         In1<float> params, double beta, double eps) {
  xielu_backward_impl<float>(exec, detail::Rounded<W>{dinp, 0}, dparams, inp, dout, params, beta, eps);
}

double softplus_inverse(double value) {
  if (!(value > 0)) throw std::invalid_argument("tapestry::softplus_inverse: the value must be positive");
  // log(e^v - 1) = v + log(1 - e^-v), the latter without overflow for large v
  return value > 20 ? value + std::log1p(-std::exp(-value)) : std::log(std::expm1(value));
}

#define TAPESTRY_INSTANTIATE(T)                                                                       \
  template void swiglu_forward<T>(const ExecSpace&, View2<T>, In2<T>);                               \
  template void swiglu_backward<T>(const ExecSpace&, View2<T>, In2<T>, In2<T>);                      \
  template void xielu_forward<T>(const ExecSpace&, View1<T>, In1<T>, In1<T>, double, double);        \
  template void xielu_backward<T>(const ExecSpace&, View1<T>, View1<T>, In1<T>, In1<T>, In1<T>, double, \
                                  double);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE
#define TAPESTRY_INSTANTIATE(W)                                                                         \
  template void swiglu_forward_bf16<W>(const ExecSpace&, W*, In2<float>);                               \
  template void swiglu_backward_bf16<W>(const ExecSpace&, W*, In2<float>, In2<float>);                  \
  template void xielu_forward_bf16<W>(const ExecSpace&, W*, In1<float>, In1<float>, double, double);    \
  template void xielu_backward_bf16<W>(const ExecSpace&, W*, View1<float>, In1<float>, In1<float>, In1<float>, \
                                       double, double);
TAPESTRY_INSTANTIATE(std::uint16_t)
TAPESTRY_INSTANTIATE(float)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
