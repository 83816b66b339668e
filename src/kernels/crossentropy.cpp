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
                           In1<int> targets, double dloss, int V, int vocab_begin) {
  const int N = int(probs.extent(0)), Vp = int(probs.extent(1));
  const T d = T(dloss);
  const int Vr = V - vocab_begin;  // this shard's real columns: [0, Vr)
  Kokkos::parallel_for(
      "tapestry::softmax_xent_backward",
      Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>(exec, {0, 0}, {N, Vp}),
      KOKKOS_LAMBDA(int n, int v) {
        const T p = v < Vr ? probs(n, v) : T(0);
        dlogits(n, v) = d * (p - (v + vocab_begin == targets(n) ? T(1) : T(0)));
      });
}

template <class T>
void xent_shard_stats(const ExecSpace& exec, View2<T> stats, In2<T> logits, In1<int> targets, int V,
                      int vocab_begin) {
  const int N = int(logits.extent(0)), Vl = int(logits.extent(1));
  const int Vr = V - vocab_begin < Vl ? V - vocab_begin : Vl;  // real columns here (may be <= 0)
  Kokkos::parallel_for(
      "tapestry::xent_shard_stats", Kokkos::RangePolicy<ExecSpace>(exec, 0, N), KOKKOS_LAMBDA(int n) {
        T maxv = -1e30;
        for (int v = 0; v < Vr; ++v) maxv = logits(n, v) > maxv ? logits(n, v) : maxv;
        T sum = 0;
        for (int v = 0; v < Vr; ++v) sum += math::exp(logits(n, v) - maxv);
        const int t = targets(n) - vocab_begin;
        stats(n, 0) = maxv;
        stats(n, 1) = sum;
        stats(n, 2) = t >= 0 && t < Vr ? logits(n, t) : T(0);
      });
}

template <class T>
void xent_shard_finish(const ExecSpace& exec, View2<T> probs, View1<T> losses, In2<T> logits,
                       In3<T> all_stats, int V, int vocab_begin) {
  const int N = int(logits.extent(0)), Vl = int(logits.extent(1)), R = int(all_stats.extent(0));
  const int Vr = V - vocab_begin < Vl ? V - vocab_begin : Vl;
  Kokkos::parallel_for(
      "tapestry::xent_shard_finish", Kokkos::RangePolicy<ExecSpace>(exec, 0, N), KOKKOS_LAMBDA(int n) {
        T M = -1e30, target = 0;
        for (int r = 0; r < R; ++r) M = all_stats(r, n, 0) > M ? all_stats(r, n, 0) : M;
        T S = 0;
        for (int r = 0; r < R; ++r) {
          S += all_stats(r, n, 1) * math::exp(all_stats(r, n, 0) - M);
          target += all_stats(r, n, 2);
        }
        const T lse = M + math::log(S);
        for (int v = 0; v < Vl; ++v) probs(n, v) = v < Vr ? math::exp(logits(n, v) - lse) : T(0);
        losses(n) = lse - target;
      });
}

#define TAPESTRY_INSTANTIATE(T)                                                                   \
  template void softmax_xent_forward<T>(const ExecSpace&, View2<T>, View1<T>, In2<T>, In1<int>, \
                                        int);                                                     \
  template void softmax_xent_backward<T>(const ExecSpace&, View2<T>, In2<T>, In1<int>, double,  \
                                         int, int);                                               \
  template void xent_shard_stats<T>(const ExecSpace&, View2<T>, In2<T>, In1<int>, int, int);     \
  template void xent_shard_finish<T>(const ExecSpace&, View2<T>, View1<T>, In2<T>, In3<T>, int, int);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
