#include "tapestry/kernels/layernorm.hpp"

#include <stdexcept>

#include "tapestry/kernels/math.hpp"
#include "team.hpp"

namespace tapestry::kernels {

// Rows are read through plain pointers (&v(n, 0); LayoutRight): indexing the 2-d views in the
// inner loops kept them from vectorizing on hosts.

template <class T>
void layernorm_forward(const ExecSpace& exec, View2<T> out, View1<T> mean, View1<T> rstd,
                       In2<T> inp, In1<T> weight, In1<T> bias, double eps) {
  const int N = int(inp.extent(0)), C = int(inp.extent(1));
  const T e = T(eps);
  const T *const w = weight.data(), *const bi = bias.data();
  Kokkos::parallel_for(
      "tapestry::layernorm_forward", detail::team_per_row(exec, N), KOKKOS_LAMBDA(const detail::Member& tm) {
        const int n = tm.league_rank();
        const T* const x = &inp(n, 0);
        T* const y = &out(n, 0);
        const T m = detail::team_sum<T>(tm, C, [&](int c) { return x[c]; }) / C;
        const T var = detail::team_sum<T>(tm, C, [&](int c) {
                        const T d = x[c] - m;
                        return d * d;
                      }) / C;
        const T s = T(1) / math::sqrt(var + e);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, C), [&](int c) { y[c] = (x[c] - m) * s * w[c] + bi[c]; });
        Kokkos::single(Kokkos::PerTeam(tm), [&] {
          mean(n) = m;
          rstd(n) = s;
        });
      });
}

template <class T>
void layernorm_backward(const ExecSpace& exec, View2<T> dinp, View1<T> dweight, View1<T> dbias,
                        In2<T> dout, In2<T> inp, In1<T> weight, In1<T> mean, In1<T> rstd, View2<T> scratch) {
  const int N = int(inp.extent(0)), C = int(inp.extent(1));
  const int NB = int(norm_scratch_rows(std::size_t(N)));
  if (int(scratch.extent(0)) < NB || int(scratch.extent(1)) < 2 * C)
    throw std::invalid_argument("tapestry::layernorm_backward: scratch is not (norm_scratch_rows(N), 2 C)");
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
  // dweight, dbias: each block of rows sums its columns (consecutive threads, consecutive
  // columns) into the scratch, then each column sums the blocks in order.
  const std::size_t ldx = inp.stride_0(), ldg = dout.stride_0();
  const T *const x0 = inp.data(), *const g0 = dout.data(), *const mu = mean.data(), *const rs = rstd.data();
  Kokkos::parallel_for(
      "tapestry::layernorm_backward_params", detail::team_per_row(exec, NB), KOKKOS_LAMBDA(const detail::Member& tm) {
        const int b = tm.league_rank(), n0 = b * kNormRowBlock, n1 = n0 + kNormRowBlock < N ? n0 + kNormRowBlock : N;
        T* const part = &scratch(b, 0);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, C), [&](int c) {
          T dw = 0, db = 0;
          for (int n = n0; n < n1; ++n) {
            const T g = g0[std::size_t(n) * ldg + std::size_t(c)];
            dw += (x0[std::size_t(n) * ldx + std::size_t(c)] - mu[n]) * rs[n] * g;
            db += g;
          }
          part[c] = dw;
          part[C + c] = db;
        });
      });
  Kokkos::parallel_for(
      "tapestry::layernorm_backward_params_sum", Kokkos::RangePolicy<ExecSpace>(exec, 0, C), KOKKOS_LAMBDA(int c) {
        T dw = 0, db = 0;
        for (int b = 0; b < NB; ++b) {
          dw += scratch(b, c);
          db += scratch(b, C + c);
        }
        dweight(c) += dw;
        dbias(c) += db;
      });
}

#define TAPESTRY_INSTANTIATE(T)                                                                  \
  template void layernorm_forward<T>(const ExecSpace&, View2<T>, View1<T>, View1<T>, In2<T>,    \
                                     In1<T>, In1<T>, double);                                    \
  template void layernorm_backward<T>(const ExecSpace&, View2<T>, View1<T>, View1<T>, In2<T>,   \
                                      In2<T>, In1<T>, In1<T>, In1<T>, View2<T>);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
