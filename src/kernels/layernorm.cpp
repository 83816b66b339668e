#include "tapestry/kernels/layernorm.hpp"

#include "tapestry/kernels/math.hpp"
#include "team.hpp"

namespace tapestry::kernels {

template <class T>
void layernorm_forward(const ExecSpace& exec, View2<T> out, View1<T> mean, View1<T> rstd,
                       In2<T> inp, In1<T> weight, In1<T> bias, double eps) {
  const int N = int(inp.extent(0)), C = int(inp.extent(1));
  const T e = T(eps);
  Kokkos::parallel_for(
      "tapestry::layernorm_forward", detail::team_per_row(exec, N), KOKKOS_LAMBDA(const detail::Member& tm) {
        const int n = tm.league_rank();
        const T m = detail::team_sum<T>(tm, C, [&](int c) { return inp(n, c); }) / C;
        const T var = detail::team_sum<T>(tm, C, [&](int c) {
                        const T d = inp(n, c) - m;
                        return d * d;
                      }) / C;
        const T s = T(1) / math::sqrt(var + e);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, C),
                             [&](int c) { out(n, c) = (inp(n, c) - m) * s * weight(c) + bias(c); });
        Kokkos::single(Kokkos::PerTeam(tm), [&] {
          mean(n) = m;
          rstd(n) = s;
        });
      });
}

template <class T>
void layernorm_backward(const ExecSpace& exec, View2<T> dinp, View1<T> dweight, View1<T> dbias,
                        In2<T> dout, In2<T> inp, In1<T> weight, In1<T> mean, In1<T> rstd) {
  const int N = int(inp.extent(0)), C = int(inp.extent(1));
  // dinp: one row per work item.
  Kokkos::parallel_for(
      "tapestry::layernorm_backward_input", detail::team_per_row(exec, N), KOKKOS_LAMBDA(const detail::Member& tm) {
        const int n = tm.league_rank();
        const T m = mean(n), s = rstd(n);
        const T dnorm_mean = detail::team_sum<T>(tm, C, [&](int c) { return weight(c) * dout(n, c); }) / C;
        const T dnorm_norm_mean =
            detail::team_sum<T>(tm, C, [&](int c) {
              const T norm = (inp(n, c) - m) * s;
              return weight(c) * dout(n, c) * norm;
            }) / C;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, C), [&](int c) {
          const T norm = (inp(n, c) - m) * s;
          const T dnorm = weight(c) * dout(n, c);
          dinp(n, c) += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
        });
      });
  // dweight, dbias: one team per channel, reducing over rows (no atomics, a fixed order per backend).
  Kokkos::parallel_for(
      "tapestry::layernorm_backward_params", detail::team_per_row(exec, C), KOKKOS_LAMBDA(const detail::Member& tm) {
        const int c = tm.league_rank();
        const T dw = detail::team_sum<T>(tm, N, [&](int n) { return (inp(n, c) - mean(n)) * rstd(n) * dout(n, c); });
        const T db = detail::team_sum<T>(tm, N, [&](int n) { return dout(n, c); });
        Kokkos::single(Kokkos::PerTeam(tm), [&] {
          dweight(c) += dw;
          dbias(c) += db;
        });
      });
}

#define TAPESTRY_INSTANTIATE(T)                                                                  \
  template void layernorm_forward<T>(const ExecSpace&, View2<T>, View1<T>, View1<T>, In2<T>,    \
                                     In1<T>, In1<T>, double);                                    \
  template void layernorm_backward<T>(const ExecSpace&, View2<T>, View1<T>, View1<T>, In2<T>,   \
                                      In2<T>, In1<T>, In1<T>, In1<T>);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
