#include "tapestry/kernels/attention.hpp"

#include <stdexcept>

#include "tapestry/kernels/math.hpp"
#include "team.hpp"

namespace tapestry::kernels {

// qkv (B, T, 3C): for head h, q is columns [h*hs, (h+1)*hs), k is C + that, v is 2C + that.
// Per (b, h), Q, K, V are (T, hs) matrices with row stride 3C, so each product is one gemm over a
// strided slice, batched over the heads (head stride hs in qkv, T*T in att).

namespace {
struct Shape {
  int B, T, C, NH, hs;
};
template <class T> Shape shape_of(const In3<T>& qkv, int NH) {
  const int C = int(qkv.extent(2)) / 3;
  if (int(qkv.extent(2)) != 3 * C || NH < 1 || C % NH != 0)
    throw std::invalid_argument("tapestry::attention: qkv is not (B, T, 3C) with C divisible by n_head");
  return {int(qkv.extent(0)), int(qkv.extent(1)), C, NH, C / NH};
}
}  // namespace

template <class T>
void attention_forward(const Blas& blas, View3<T> out, View4<T> att, In3<T> qkv, int NH) {
  const auto s = shape_of<T>(qkv, NH);
  const int Tn = s.T, C = s.C, hs = s.hs;
  const T scale = T(1) / math::sqrt(T(hs));
  const long TT = long(Tn) * Tn;
  for (int b = 0; b < s.B; ++b) {
    const T* q = qkv.data() + long(b) * Tn * 3 * C;
    // att(b, h) (T, T) = scale * Q (T, hs) @ K^T (hs, T)
    blas.attention_gemm<T>(false, true, Tn, Tn, hs, scale, q, 3 * C, hs, q + C, 3 * C, hs,
                                 T(0), att.data() + long(b) * NH * TT, Tn, TT, NH);
  }
  // Causal softmax per query row; entries above the diagonal become exactly 0.
  Kokkos::parallel_for(
      "tapestry::attention_softmax_forward", detail::team_per_row(blas.exec(), s.B * NH * Tn),
      KOKKOS_LAMBDA(const detail::Member& m) {
        const int i = m.league_rank(), t = i % Tn, h = (i / Tn) % NH, b = i / (Tn * NH);
        const T maxv = detail::team_max<T>(m, t + 1, T(-1e30), [&](int t2) { return att(b, h, t, t2); });
        const T sum = detail::team_sum<T>(m, t + 1, [&](int t2) {
          const T e = math::exp(att(b, h, t, t2) - maxv);
          att(b, h, t, t2) = e;
          return e;
        });
        const T inv = T(1) / sum;
        m.team_barrier();  // the exponentials are in att
        Kokkos::parallel_for(Kokkos::TeamThreadRange(m, Tn),
                             [&](int t2) { att(b, h, t, t2) = t2 <= t ? att(b, h, t, t2) * inv : T(0); });
      });
  for (int b = 0; b < s.B; ++b) {
    // out(b, :, head h) (T, hs) = att(b, h) (T, T) @ V (T, hs)
    blas.attention_gemm<T>(false, false, Tn, hs, Tn, T(1), att.data() + long(b) * NH * TT, Tn, TT,
                                 qkv.data() + long(b) * Tn * 3 * C + 2 * C, 3 * C, hs, T(0),
                                 out.data() + long(b) * Tn * C, C, hs, NH);
  }
}

template <class T>
void attention_backward(const Blas& blas, View3<T> dqkv, View4<T> dpre, In3<T> dout, In3<T> qkv,
                        In4<T> att, int NH) {
  const auto s = shape_of<T>(qkv, NH);
  const int Tn = s.T, C = s.C, hs = s.hs;
  const T scale = T(1) / math::sqrt(T(hs));
  const long TT = long(Tn) * Tn;
  for (int b = 0; b < s.B; ++b) {
    const T* v = qkv.data() + long(b) * Tn * 3 * C + 2 * C;
    const T* dy = dout.data() + long(b) * Tn * C;
    T* dv = dqkv.data() + long(b) * Tn * 3 * C + 2 * C;
    const T* a = att.data() + long(b) * NH * TT;
    // dV (T, hs) = att^T (T, T) @ dY (T, hs)
    blas.attention_gemm<T>(true, false, Tn, hs, Tn, T(1), a, Tn, TT, dy, C, hs, T(0), dv, 3 * C, hs, NH);
    // datt (T, T) = dY (T, hs) @ V^T (hs, T)
    blas.attention_gemm<T>(false, true, Tn, Tn, hs, T(1), dy, C, hs, v, 3 * C, hs, T(0),
                                 dpre.data() + long(b) * NH * TT, Tn, TT, NH);
  }
  // Softmax backward, in place: dpre = scale * att * (datt - sum_t2 att * datt); 0 above the diagonal.
  Kokkos::parallel_for(
      "tapestry::attention_softmax_backward", detail::team_per_row(blas.exec(), s.B * NH * Tn),
      KOKKOS_LAMBDA(const detail::Member& m) {
        const int i = m.league_rank(), t = i % Tn, h = (i / Tn) % NH, b = i / (Tn * NH);
        const T dot = detail::team_sum<T>(m, t + 1, [&](int t2) { return att(b, h, t, t2) * dpre(b, h, t, t2); });
        Kokkos::parallel_for(Kokkos::TeamThreadRange(m, Tn), [&](int t2) {
          dpre(b, h, t, t2) = t2 <= t ? scale * att(b, h, t, t2) * (dpre(b, h, t, t2) - dot) : T(0);
        });
      });
  for (int b = 0; b < s.B; ++b) {
    const T* q = qkv.data() + long(b) * Tn * 3 * C;
    T* dq = dqkv.data() + long(b) * Tn * 3 * C;
    const T* ds = dpre.data() + long(b) * NH * TT;
    // dQ (T, hs) = dS (T, T) @ K (T, hs);  dK (T, hs) = dS^T (T, T) @ Q (T, hs)
    blas.attention_gemm<T>(false, false, Tn, hs, Tn, T(1), ds, Tn, TT, q + C, 3 * C, hs, T(0), dq, 3 * C, hs, NH);
    blas.attention_gemm<T>(true, false, Tn, hs, Tn, T(1), ds, Tn, TT, q, 3 * C, hs, T(0), dq + C, 3 * C, hs, NH);
  }
}

#define TAPESTRY_INSTANTIATE(T)                                                                  \
  template void attention_forward<T>(const Blas&, View3<T>, View4<T>, In3<T>, int);            \
  template void attention_backward<T>(const Blas&, View3<T>, View4<T>, In3<T>, In3<T>, In4<T>, \
                                      int);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
