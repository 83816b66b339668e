#include "tapestry/kernels/rmsnorm.hpp"

#include "norm_params.hpp"
#include "tapestry/kernels/math.hpp"
#include "sink.hpp"
#include "team.hpp"

namespace tapestry::kernels {

// y = x s w with s = (mean(x^2) + eps)^(-1/2); ds/dx_j = -s^3 x_j / C, so
// dx_j = s (w_j g_j - x_j s^2 mean_c(w_c g_c x_c)) and dw_j = sum_n g_j x_j s.

// Rows through plain pointers (&v(n, 0); LayoutRight), as in layernorm.cpp.

namespace {
/// The rows of rmsnorm_forward through a sink, as layernorm_rows.
template <class T, class Out>
void rmsnorm_rows(const ExecSpace& exec, Out out, View1<T> rstd, In2<T> inp, In1<T> weight, double eps) {
  const int N = int(inp.extent(0)), C = int(inp.extent(1));
  const T e = T(eps);
  const T* const w = weight.data();
  Kokkos::parallel_for(
      "tapestry::rmsnorm_forward", detail::team_per_row(exec, N), KOKKOS_LAMBDA(const detail::Member& tm) {
        const int n = tm.league_rank();
        const T* const x = &inp(n, 0);
        auto* const y = out.row(n);
        const T ms = detail::team_sum<T>(tm, C, [&](int c) { return x[c] * x[c]; }) / T(C);
        const T s = T(1) / math::sqrt(ms + e);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, C), [&](int c) {
          const T v = x[c] * s * w[c];
          out.put(y[c], v);
        });
        Kokkos::single(Kokkos::PerTeam(tm), [&] { rstd(n) = s; });
      });
}
}  // namespace

template <class T>
void rmsnorm_forward(const ExecSpace& exec, View2<T> out, View1<T> rstd, In2<T> inp, In1<T> weight, double eps) {
  rmsnorm_rows<T>(exec, detail::Floats<T>{out.data(), out.stride_0()}, rstd, inp, weight, eps);
}

template <class W>
void rmsnorm_forward_bf16(const ExecSpace& exec, W* out, View1<float> rstd, In2<float> inp, In1<float> weight,
                          double eps) {
  rmsnorm_rows<float>(exec, detail::Rounded<W>{out, inp.extent(1)}, rstd, inp, weight, eps);
}

template <class T>
void rmsnorm_backward(const ExecSpace& exec, View2<T> dinp, View1<T> dweight, In2<T> dout, In2<T> inp,
                      In1<T> weight, In1<T> rstd, View2<T> scratch) {
  const int N = int(inp.extent(0)), C = int(inp.extent(1));
  detail::check_norm_scratch("tapestry::rmsnorm_backward", N, C, scratch);
  const T* const w = weight.data();
  // dinp: one row per team.
  Kokkos::parallel_for(
      "tapestry::rmsnorm_backward_input", detail::team_per_row(exec, N), KOKKOS_LAMBDA(const detail::Member& tm) {
        const int n = tm.league_rank();
        const T s = rstd(n);
        const T *const x = &inp(n, 0), *const g = &dout(n, 0);
        T* const dx = &dinp(n, 0);
        const T m = detail::team_sum<T>(tm, C, [&](int c) { return w[c] * g[c] * x[c]; }) / T(C);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, C), [&](int c) { dx[c] += s * (w[c] * g[c] - x[c] * s * s * m); });
      });
  // dweight: a sum over the rows in two passes (norm_params.hpp).
  const std::size_t ldx = inp.stride_0(), ldg = dout.stride_0();
  const T *const x0 = inp.data(), *const g0 = dout.data(), *const rs = rstd.data();
  detail::column_sums<1>(
      exec, "tapestry::rmsnorm_backward_weight", N, C, scratch,
      KOKKOS_LAMBDA(int n, int c, T(&acc)[1]) {
        acc[0] += g0[std::size_t(n) * ldg + std::size_t(c)] * x0[std::size_t(n) * ldx + std::size_t(c)] * rs[n];
      },
      dweight);
}

template <class T>
void head_rmsnorm_forward(const ExecSpace& exec, View2<T> out, View2<T> rstd, In2<T> inp, In1<T> weight, int c0,
                          int nh, double eps) {
  const int N = int(inp.extent(0)), hd = int(weight.extent(0));
  const T e = T(eps);
  // One team per (row, head).
  Kokkos::parallel_for(
      "tapestry::head_rmsnorm_forward", detail::team_per_row(exec, N * nh), KOKKOS_LAMBDA(const detail::Member& tm) {
        const int n = tm.league_rank() / nh, h = tm.league_rank() % nh, o = c0 + h * hd;
        const T ms = detail::team_sum<T>(tm, hd, [&](int i) { return inp(n, o + i) * inp(n, o + i); }) / T(hd);
        const T s = T(1) / math::sqrt(ms + e);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, hd), [&](int i) { out(n, o + i) = inp(n, o + i) * s * weight(i); });
        Kokkos::single(Kokkos::PerTeam(tm), [&] { rstd(n, h) = s; });
      });
}

template <class T>
void head_rmsnorm_backward(const ExecSpace& exec, View2<T> dinp, View1<T> dweight, In2<T> dout, In2<T> inp,
                           In1<T> weight, In2<T> rstd, int c0, int nh) {
  const int N = int(inp.extent(0)), hd = int(weight.extent(0));
  // dweight first: dinp may alias dout. One team per channel i, reducing over (row, head) in a fixed order.
  Kokkos::parallel_for(
      "tapestry::head_rmsnorm_backward_weight", detail::team_per_row(exec, hd), KOKKOS_LAMBDA(const detail::Member& tm) {
        const int i = tm.league_rank();
        const T dw = detail::team_sum<T>(tm, N * nh, [&](int k) {
          const int n = k / nh, h = k % nh, c = c0 + h * hd + i;
          return dout(n, c) * inp(n, c) * rstd(n, h);
        });
        Kokkos::single(Kokkos::PerTeam(tm), [&] { dweight(i) += dw; });
      });
  // dinp: one team per (row, head); each element is read (dout) and written (dinp) by the same thread
  // after the team's reduction, so dinp may alias dout.
  Kokkos::parallel_for(
      "tapestry::head_rmsnorm_backward_input", detail::team_per_row(exec, N * nh),
      KOKKOS_LAMBDA(const detail::Member& tm) {
        const int n = tm.league_rank() / nh, h = tm.league_rank() % nh, o = c0 + h * hd;
        const T s = rstd(n, h);
        const T m = detail::team_sum<T>(tm, hd, [&](int i) { return weight(i) * dout(n, o + i) * inp(n, o + i); }) / T(hd);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, hd), [&](int i) {
          dinp(n, o + i) = s * (weight(i) * dout(n, o + i) - inp(n, o + i) * s * s * m);
        });
      });
}

#define TAPESTRY_INSTANTIATE(T)                                                                           \
  template void rmsnorm_forward<T>(const ExecSpace&, View2<T>, View1<T>, In2<T>, In1<T>, double);        \
  template void rmsnorm_backward<T>(const ExecSpace&, View2<T>, View1<T>, In2<T>, In2<T>, In1<T>, In1<T>, \
                                    View2<T>);                                                            \
  template void head_rmsnorm_forward<T>(const ExecSpace&, View2<T>, View2<T>, In2<T>, In1<T>, int, int,  \
                                        double);                                                          \
  template void head_rmsnorm_backward<T>(const ExecSpace&, View2<T>, View1<T>, In2<T>, In2<T>, In1<T>,   \
                                         In2<T>, int, int);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE
template void rmsnorm_forward_bf16<std::uint16_t>(const ExecSpace&, std::uint16_t*, View1<float>, In2<float>,
                                                  In1<float>, double);
template void rmsnorm_forward_bf16<float>(const ExecSpace&, float*, View1<float>, In2<float>, In1<float>, double);

}  // namespace tapestry::kernels
