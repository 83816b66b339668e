#include "tapestry/kernels/layernorm.hpp"

#include "norm_params.hpp"
#include "tapestry/kernels/math.hpp"
#include "sink.hpp"
#include "team.hpp"

namespace tapestry::kernels {

// Rows are read through plain pointers (&v(n, 0); LayoutRight): indexing the 2-d views in the
// inner loops kept them from vectorizing on hosts.

namespace {
/// The rows of layernorm_forward, written through a sink (sink.hpp): the fp32 output, or only its
/// bf16 copy (rows C apart).
template <class T, class Out>
void layernorm_rows(const ExecSpace& exec, Out out, View1<T> mean, View1<T> rstd, In2<T> inp,
                    In1<T> weight, In1<T> bias, double eps) {
  const int N = int(inp.extent(0)), C = int(inp.extent(1));
  const T e = T(eps);
  const T *const w = weight.data(), *const bi = bias.data();
  Kokkos::parallel_for(
      "tapestry::layernorm_forward", detail::team_per_row(exec, N), KOKKOS_LAMBDA(const detail::Member& tm) {
        const int n = tm.league_rank();
        const T* const x = &inp(n, 0);
        auto* const y = out.row(n);
        const T m = detail::team_sum<T>(tm, C, [&](int c) { return x[c]; }) / C;
        const T var = detail::team_sum<T>(tm, C, [&](int c) {
                        const T d = x[c] - m;
                        return d * d;
                      }) / C;
        const T s = T(1) / math::sqrt(var + e);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, C), [&](int c) {
          const T v = (x[c] - m) * s * w[c] + bi[c];
          out.put(y[c], v);
        });
        Kokkos::single(Kokkos::PerTeam(tm), [&] {
          mean(n) = m;
          rstd(n) = s;
        });
      });
}
}  // namespace

template <class T>
void layernorm_forward(const ExecSpace& exec, View2<T> out, View1<T> mean, View1<T> rstd,
                       In2<T> inp, In1<T> weight, In1<T> bias, double eps) {
  layernorm_rows<T>(exec, detail::Floats<T>{out.data(), out.stride_0()}, mean, rstd, inp, weight, bias, eps);
}

template <class W>
void layernorm_forward_bf16(const ExecSpace& exec, W* out, View1<float> mean, View1<float> rstd, In2<float> inp,
                            In1<float> weight, In1<float> bias, double eps) {
  layernorm_rows<float>(exec, detail::Rounded<W>{out, inp.extent(1)}, mean, rstd, inp, weight, bias, eps);
}

template <class T>
void layernorm_backward(const ExecSpace& exec, View2<T> dinp, View1<T> dweight, View1<T> dbias,
                        In2<T> dout, In2<T> inp, In1<T> weight, In1<T> mean, In1<T> rstd, View2<T> scratch) {
  const int N = int(inp.extent(0)), C = int(inp.extent(1));
  detail::check_norm_scratch("tapestry::layernorm_backward", N, C, scratch);
  const T* const w = weight.data();
  // dinp: one row per work item.
  Kokkos::parallel_for(
      "tapestry::layernorm_backward_input", detail::team_per_row(exec, N), KOKKOS_LAMBDA(const detail::Member& tm) {
        const int n = tm.league_rank();
        const T m = mean(n), s = rstd(n);
        const T *const x = &inp(n, 0), *const g = &dout(n, 0);
        T* const dx = &dinp(n, 0);
        const T dnorm_mean = detail::team_sum<T>(tm, C, [&](int c) { return w[c] * g[c]; }) / C;
        const T dnorm_norm_mean = detail::team_sum<T>(tm, C, [&](int c) { return w[c] * g[c] * ((x[c] - m) * s); }) / C;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, C), [&](int c) {
          const T norm = (x[c] - m) * s;
          const T dnorm = w[c] * g[c];
          dx[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
        });
      });
  // dweight, dbias: sums over the rows in two passes (norm_params.hpp).
  const std::size_t ldx = inp.stride_0(), ldg = dout.stride_0();
  const T *const x0 = inp.data(), *const g0 = dout.data(), *const mu = mean.data(), *const rs = rstd.data();
  detail::column_sums<2>(
      exec, "tapestry::layernorm_backward_params", N, C, scratch,
      KOKKOS_LAMBDA(int n, int c, T(&acc)[2]) {
        const T g = g0[std::size_t(n) * ldg + std::size_t(c)];
        acc[0] += (x0[std::size_t(n) * ldx + std::size_t(c)] - mu[n]) * rs[n] * g;
        acc[1] += g;
      },
      dweight, dbias);
}

#define TAPESTRY_INSTANTIATE(T)                                                                  \
  template void layernorm_forward<T>(const ExecSpace&, View2<T>, View1<T>, View1<T>, In2<T>,    \
                                     In1<T>, In1<T>, double);                                    \
  template void layernorm_backward<T>(const ExecSpace&, View2<T>, View1<T>, View1<T>, In2<T>,   \
                                      In2<T>, In1<T>, In1<T>, In1<T>, View2<T>);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE
template void layernorm_forward_bf16<std::uint16_t>(const ExecSpace&, std::uint16_t*, View1<float>, View1<float>,
                                                    In2<float>, In1<float>, In1<float>, double);
template void layernorm_forward_bf16<float>(const ExecSpace&, float*, View1<float>, View1<float>, In2<float>,
                                            In1<float>, In1<float>, double);

}  // namespace tapestry::kernels
