#include "tapestry/kernels/layernorm.hpp"

#include "tapestry/kernels/math.hpp"

namespace tapestry::kernels {

template <class T>
void layernorm_forward(const ExecSpace& exec, View2<T> out, View1<T> mean, View1<T> rstd,
                       In2<T> inp, In1<T> weight, In1<T> bias, double eps) {
  const int N = int(inp.extent(0)), C = int(inp.extent(1));
  const T e = T(eps);
  Kokkos::parallel_for(
      "tapestry::layernorm_forward", Kokkos::RangePolicy<ExecSpace>(exec, 0, N),
      KOKKOS_LAMBDA(int n) {
        T m = 0;
        for (int c = 0; c < C; ++c) m += inp(n, c);
        m /= C;
        T var = 0;
        for (int c = 0; c < C; ++c) {
          const T d = inp(n, c) - m;
          var += d * d;
        }
        var /= C;
        const T s = T(1) / math::sqrt(var + e);
        for (int c = 0; c < C; ++c) out(n, c) = (inp(n, c) - m) * s * weight(c) + bias(c);
        mean(n) = m;
        rstd(n) = s;
      });
}

template <class T>
void layernorm_backward(const ExecSpace& exec, View2<T> dinp, View1<T> dweight, View1<T> dbias,
                        In2<T> dout, In2<T> inp, In1<T> weight, In1<T> mean, In1<T> rstd) {
  const int N = int(inp.extent(0)), C = int(inp.extent(1));
  // dinp: one row per work item.
  Kokkos::parallel_for(
      "tapestry::layernorm_backward_input", Kokkos::RangePolicy<ExecSpace>(exec, 0, N),
      KOKKOS_LAMBDA(int n) {
        const T m = mean(n), s = rstd(n);
        T dnorm_mean = 0, dnorm_norm_mean = 0;
        for (int c = 0; c < C; ++c) {
          const T norm = (inp(n, c) - m) * s;
          const T dnorm = weight(c) * dout(n, c);
          dnorm_mean += dnorm;
          dnorm_norm_mean += dnorm * norm;
        }
        dnorm_mean /= C;
        dnorm_norm_mean /= C;
        for (int c = 0; c < C; ++c) {
          const T norm = (inp(n, c) - m) * s;
          const T dnorm = weight(c) * dout(n, c);
          dinp(n, c) += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
        }
      });
  // dweight, dbias: one channel per work item, reducing over rows (no atomics).
  Kokkos::parallel_for(
      "tapestry::layernorm_backward_params", Kokkos::RangePolicy<ExecSpace>(exec, 0, C),
      KOKKOS_LAMBDA(int c) {
        T dw = 0, db = 0;
        for (int n = 0; n < N; ++n) {
          dw += (inp(n, c) - mean(n)) * rstd(n) * dout(n, c);
          db += dout(n, c);
        }
        dweight(c) += dw;
        dbias(c) += db;
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
