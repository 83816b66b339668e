#include "tapestry/kernels/crossentropy.hpp"

#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "tapestry/kernels/bf16.hpp"
#include "tapestry/kernels/math.hpp"
#include "team.hpp"

namespace tapestry::kernels {

template <class T>
void softmax_xent_backward(const ExecSpace& exec, View2<T> dlogits, In2<T> probs,
                           In1<int> targets, double dloss, int V, int vocab_begin) {
  const int N = int(probs.extent(0)), Vp = int(probs.extent(1));
  const T d = T(dloss);
  const int Vr = V - vocab_begin;  // this shard's real columns: [0, Vr)
  Kokkos::parallel_for(
      "tapestry::softmax_xent_backward", detail::team_per_row(exec, N), KOKKOS_LAMBDA(const detail::Member& m) {
        const int n = m.league_rank();  // a team per row: consecutive threads, consecutive columns
        const int t = targets(n) - vocab_begin;  // this shard's column of the target (may be outside it)
        const bool keep = targets(n) >= 0;  // an ignored row: no gradient
        const T* const pr = &probs(n, 0);
        T* const dl = &dlogits(n, 0);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(m, Vp), [&](int v) {
          const T p = keep && v < Vr ? pr[v] : T(0);
          dl[v] = d * (p - (v == t ? T(1) : T(0)));
        });
      });
}

namespace {
/// softmax_xent_forward's and softmax_xent_fused's kernel, one team per row: the max, the
/// exponentials (kept unnormalized in `out`), their sum and the loss; then the last pass writes
/// the probabilities (grad false), or the gradient dloss * (probabilities - onehot), normalizing on
/// the way: into `out`, or with grad16 only there, rounded to bf16 (W = std::uint16_t: the 16
/// bits; float: the rounded values).
template <class T, class W>
void xent_rows(const char* label, const ExecSpace& exec, View2<T> out, View1<T> losses, In2<T> logits,
               In1<int> targets, int V, bool grad, double dloss, W* grad16) {
  const int N = int(logits.extent(0)), Vp = int(logits.extent(1));
  const T d = T(dloss);
  Kokkos::parallel_for(label, detail::team_per_row(exec, N), KOKKOS_LAMBDA(const detail::Member& m) {
    const int n = m.league_rank();
    const T* const lg = &logits(n, 0);  // rows through plain pointers: loops that vectorize on hosts
    T* const o = &out(n, 0);
    W* const o16 = grad16 != nullptr ? grad16 + std::size_t(n) * std::size_t(Vp) : nullptr;
    const int t = targets(n);
    const T maxv = detail::team_max<T>(m, V, T(-1e30), [&](int v) { return lg[v]; });
    // the exponentials first (a loop that vectorizes), then their sum
    Kokkos::parallel_for(Kokkos::TeamThreadRange(m, V), [&](int v) { o[v] = math::vexp(lg[v] - maxv); });
    m.team_barrier();
    const T sum = detail::team_sum<T>(m, V, [&](int v) { return o[v]; });
    const T inv = T(1) / sum;
    Kokkos::single(Kokkos::PerTeam(m), [&] { losses(n) = t < 0 ? T(0) : -math::log(o[t] * inv); });
    m.team_barrier();
    Kokkos::parallel_for(Kokkos::TeamThreadRange(m, Vp), [&](int v) {
      if (!grad) {
        o[v] = v < V ? o[v] * inv : T(0);
        return;
      }
      const T p = t >= 0 && v < V ? o[v] * inv : T(0);
      const T g = d * (p - (v == t ? T(1) : T(0)));
      if (o16 == nullptr) o[v] = g;
      else if constexpr (std::is_same_v<W, std::uint16_t>) o16[v] = to_bf16(float(g));
      else o16[v] = W(round_bf16(float(g)));
    });
  });
}
}  // namespace

template <class T>
void softmax_xent_forward(const ExecSpace& exec, View2<T> probs, View1<T> losses, In2<T> logits,
                          In1<int> targets, int V) {
  xent_rows<T, T>("tapestry::softmax_xent_forward", exec, probs, losses, logits, targets, V, false, 0.0, nullptr);
}

template <class T>
void softmax_xent_fused(const ExecSpace& exec, View2<T> dlogits, View1<T> losses, In2<T> logits, In1<int> targets,
                        int V, double dloss) {
  xent_rows<T, T>("tapestry::softmax_xent_fused", exec, dlogits, losses, logits, targets, V, true, dloss, nullptr);
}

template <class W>
void softmax_xent_fused_bf16(const ExecSpace& exec, View2<float> scratch, View1<float> losses, In2<float> logits,
                             In1<int> targets, int V, double dloss, W* grad16) {
  if (grad16 == nullptr) throw std::invalid_argument("tapestry::softmax_xent_fused_bf16: no bf16 buffer");
  xent_rows<float, W>("tapestry::softmax_xent_fused", exec, scratch, losses, logits, targets, V, true, dloss, grad16);
}
template void softmax_xent_fused_bf16<std::uint16_t>(const ExecSpace&, View2<float>, View1<float>, In2<float>, In1<int>,
                                                     int, double, std::uint16_t*);
template void softmax_xent_fused_bf16<float>(const ExecSpace&, View2<float>, View1<float>, In2<float>, In1<int>, int,
                                             double, float*);

template <class T>
void xent_shard_stats(const ExecSpace& exec, View2<T> stats, In2<T> logits, In1<int> targets, int V,
                      int vocab_begin) {
  const int N = int(logits.extent(0)), Vl = int(logits.extent(1));
  const int Vr = V - vocab_begin < Vl ? V - vocab_begin : Vl;  // real columns here (may be <= 0)
  Kokkos::parallel_for(
      "tapestry::xent_shard_stats", detail::team_per_row(exec, N), KOKKOS_LAMBDA(const detail::Member& m) {
        const int n = m.league_rank();
        const T* const lg = &logits(n, 0);
        const T maxv = detail::team_max<T>(m, Vr, T(-1e30), [&](int v) { return lg[v]; });
        const T sum = detail::team_sum<T>(m, Vr, [&](int v) { return math::vexp(lg[v] - maxv); });
        Kokkos::single(Kokkos::PerTeam(m), [&] {
          const int t = targets(n) - vocab_begin;
          stats(n, 0) = maxv;
          stats(n, 1) = sum;
          stats(n, 2) = t >= 0 && t < Vr ? logits(n, t) : T(0);
        });
      });
}

template <class T>
void xent_shard_finish(const ExecSpace& exec, View2<T> probs, View1<T> losses, In2<T> logits,
                       In3<T> all_stats, In1<int> targets, int V, int vocab_begin) {
  const int N = int(logits.extent(0)), Vl = int(logits.extent(1)), R = int(all_stats.extent(0));
  const int Vr = V - vocab_begin < Vl ? V - vocab_begin : Vl;
  Kokkos::parallel_for(
      "tapestry::xent_shard_finish", detail::team_per_row(exec, N), KOKKOS_LAMBDA(const detail::Member& m) {
        const int n = m.league_rank();
        T M = -1e30, target = 0;  // every thread of the team: R is the TP size
        for (int r = 0; r < R; ++r) M = all_stats(r, n, 0) > M ? all_stats(r, n, 0) : M;
        T S = 0;
        for (int r = 0; r < R; ++r) {
          S += all_stats(r, n, 1) * math::vexp(all_stats(r, n, 0) - M);
          target += all_stats(r, n, 2);
        }
        const T lse = M + math::log(S);
        const T* const lg = &logits(n, 0);
        T* const p = &probs(n, 0);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(m, Vl), [&](int v) { p[v] = v < Vr ? math::vexp(lg[v] - lse) : T(0); });
        Kokkos::single(Kokkos::PerTeam(m), [&] { losses(n) = targets(n) < 0 ? T(0) : lse - target; });
      });
}

#define TAPESTRY_INSTANTIATE(T)                                                                   \
  template void softmax_xent_forward<T>(const ExecSpace&, View2<T>, View1<T>, In2<T>, In1<int>, \
                                        int);                                                     \
  template void softmax_xent_backward<T>(const ExecSpace&, View2<T>, In2<T>, In1<int>, double,  \
                                         int, int);                                               \
  template void softmax_xent_fused<T>(const ExecSpace&, View2<T>, View1<T>, In2<T>, In1<int>, int, double); \
  template void xent_shard_stats<T>(const ExecSpace&, View2<T>, In2<T>, In1<int>, int, int);     \
  template void xent_shard_finish<T>(const ExecSpace&, View2<T>, View1<T>, In2<T>, In3<T>, In1<int>, int, int);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
