#include "tapestry/kernels/crossentropy.hpp"

#include "tapestry/kernels/math.hpp"

namespace tapestry::kernels {

template <class T>
void softmax_xent_forward(const ExecSpace& exec, View2<T> probs, View1<T> losses, In2<T> logits,
                          In1<int> targets, int V) {
  const int N = int(logits.extent(0)), Vp = int(logits.extent(1));
  Kokkos::parallel_for(
      "tapestry::softmax_xent_forward", Kokkos::RangePolicy<ExecSpace>(exec, 0, N),
      KOKKOS_LAMBDA(int n) {
        T maxv = -1e30;
        for (int v = 0; v < V; ++v) { const T x_ = logits(n, v); maxv = x_ > maxv ? x_ : maxv; }
        T sum = 0;
        for (int v = 0; v < V; ++v) {
          const T e = math::exp(logits(n, v) - maxv);
          probs(n, v) = e;
          sum += e;
        }
        const T inv = T(1) / sum;
        for (int v = 0; v < V; ++v) probs(n, v) *= inv;
        for (int v = V; v < Vp; ++v) probs(n, v) = 0;
        losses(n) = -math::log(probs(n, targets(n)));
      });
}

template <class T>
void softmax_xent_backward(const ExecSpace& exec, View2<T> dlogits, In2<T> probs,
                           In1<int> targets, double dloss, int V) {
  const int N = int(probs.extent(0)), Vp = int(probs.extent(1));
  const T d = T(dloss);
  Kokkos::parallel_for(
      "tapestry::softmax_xent_backward",
      Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>(exec, {0, 0}, {N, Vp}),
      KOKKOS_LAMBDA(int n, int v) {
        const T p = v < V ? probs(n, v) : T(0);
        dlogits(n, v) = d * (p - (v == targets(n) ? T(1) : T(0)));
      });
}

#define TAPESTRY_INSTANTIATE(T)                                                                   \
  template void softmax_xent_forward<T>(const ExecSpace&, View2<T>, View1<T>, In2<T>, In1<int>, \
                                        int);                                                     \
  template void softmax_xent_backward<T>(const ExecSpace&, View2<T>, In2<T>, In1<int>, double,  \
                                         int);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
