#include "tapestry/kernels/optim.hpp"

#include <cmath>
#include <type_traits>

#include "tapestry/kernels/bf16.hpp"
#include "tapestry/kernels/math.hpp"
#include "team.hpp"

namespace tapestry::kernels {

namespace {
/// AdamW's per-step constants in T (the bias corrections folded into c1, c2).
template <class T> struct AdamWCoef {
  T lr, b1, b2, eps, gs, c1, c2;
  explicit AdamWCoef(const AdamWStep& s)
      : lr(T(s.lr)), b1(T(s.beta1)), b2(T(s.beta2)), eps(T(s.eps)), gs(T(s.grad_scale)),
        c1(T(1.0 / (1.0 - std::pow(s.beta1, double(s.t))))), c2(T(1.0 / (1.0 - std::pow(s.beta2, double(s.t))))) {}
};

/// One element's update from its gradient `grad`, weight decay `wd` (both kernels: the same rounding).
template <class T>
KOKKOS_INLINE_FUNCTION void adamw_element(T& p, T& m, T& v, T grad, const AdamWCoef<T>& c, T wd) {
  const T g = grad * c.gs;
  const T mi = c.b1 * m + (T(1) - c.b1) * g;
  const T vi = c.b2 * v + (T(1) - c.b2) * g * g;
  m = mi;
  v = vi;
  p -= c.lr * ((mi * c.c1) / (math::sqrt(vi * c.c2) + c.eps) + wd * p);
}
}  // namespace

template <class T>
void adamw_update(const ExecSpace& exec, View1<T> param, View1<T> m, View1<T> v, In1<T> grad,
                  const AdamWStep& s) {
  const AdamWCoef<T> c(s);
  const T wd = T(s.weight_decay);
  Kokkos::parallel_for(
      "tapestry::adamw_update", Kokkos::RangePolicy<ExecSpace>(exec, 0, param.extent(0)),
      KOKKOS_LAMBDA(std::size_t i) { adamw_element(param(i), m(i), v(i), grad(i), c, wd); });
}

template <class W>
void adamw_fused(const ExecSpace& exec, Kokkos::View<const AdamWChunk*, Layout, MemSpace> chunks, View1<float> param,
                 View1<float> m, View1<float> v, View1<float> grad, const AdamWStep& s, const AdamWExtras<W>& extras) {
  const AdamWCoef<float> c(s);
  const float wd = float(s.weight_decay);
  float *P = param.data(), *M = m.data(), *V = v.data(), *G = grad.data();
  W* const copy = extras.copy;
  const bool zero = extras.zero_grads;
  // One team per chunk, its elements over the team's threads (coalesced on GPUs; on hosts one
  // thread's loop over plain pointers, which vectorizes).
  Kokkos::parallel_for(
      "tapestry::adamw_fused", detail::TeamPolicy(exec, int(chunks.extent(0)), Kokkos::AUTO),
      KOKKOS_LAMBDA(const detail::Member& tm) {
        const AdamWChunk ch = chunks(tm.league_rank());
        float *p = P + ch.param, *mm = M + ch.local, *vv = V + ch.local, *g = G + ch.local;
        W* cp = copy != nullptr ? copy + ch.param : nullptr;
        const float w = ch.decay != 0 ? wd : 0.0f;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, int(ch.n)), [&](int i) {
          const float gi = g[i];
          if (zero) g[i] = 0.0f;
          adamw_element(p[i], mm[i], vv[i], gi, c, w);
          if (cp != nullptr) {
            if constexpr (std::is_same_v<W, std::uint16_t>) cp[i] = to_bf16(p[i]);
            else cp[i] = round_bf16(p[i]);
          }
        });
      });
}

template <class T> double sum_squares(const ExecSpace& exec, In1<T> x) {
  // Each work item sums a block with kLanes independent partial sums: on hosts the inner loop
  // vectorizes (a single running sum is a serial dependency chain), and 32 lanes are four
  // independent vectors of doubles (8 lanes, one chain of adds, ran at half the memory's rate);
  // on GPUs blocks are threads.
  constexpr std::size_t kLanes = detail::kHostTeams ? 32 : 8, kBlock = 1024;
  const std::size_t n = x.extent(0);
  const std::size_t blocks = (n + kBlock - 1) / kBlock;
  double s = 0;
  Kokkos::parallel_reduce(
      "tapestry::sum_squares", Kokkos::RangePolicy<ExecSpace>(exec, 0, blocks),
      KOKKOS_LAMBDA(std::size_t b, double& acc) {
        const std::size_t begin = b * kBlock, end = begin + kBlock < n ? begin + kBlock : n;
        double lane[kLanes] = {};
        std::size_t i = begin;
        for (; i + kLanes <= end; i += kLanes)
          for (std::size_t j = 0; j < kLanes; ++j) lane[j] += double(x(i + j)) * double(x(i + j));
        for (; i < end; ++i) lane[0] += double(x(i)) * double(x(i));
        double total = 0;
        for (std::size_t j = 0; j < kLanes; ++j) total += lane[j];
        acc += total;
      },
      s);
  return s;
}

template <class T>
void pseudo_gradient(const ExecSpace& exec, In1<T> outer, In1<T> local, View1<T> delta) {
  Kokkos::parallel_for(
      "tapestry::pseudo_gradient", Kokkos::RangePolicy<ExecSpace>(exec, 0, delta.extent(0)),
      KOKKOS_LAMBDA(std::size_t i) { delta(i) = outer(i) - local(i); });
}

template <class T>
void outer_sgd_update(const ExecSpace& exec, View1<T> outer, View1<T> momentum, In1<T> delta, const OuterStep& s) {
  const T lr = T(s.lr), mu = T(s.momentum), scale = T(s.delta_scale);
  const bool nesterov = s.nesterov;
  Kokkos::parallel_for(
      "tapestry::outer_sgd_update", Kokkos::RangePolicy<ExecSpace>(exec, 0, outer.extent(0)),
      KOKKOS_LAMBDA(std::size_t i) {
        const T g = delta(i) * scale;
        const T b = mu * momentum(i) + g;
        momentum(i) = b;
        outer(i) -= lr * (nesterov ? g + mu * b : b);
      });
}

template <class T>
void outer_merge(const ExecSpace& exec, View1<T> local, In1<T> outer, double mix) {
  const T a = T(mix), b = T(1.0 - mix);
  Kokkos::parallel_for(
      "tapestry::outer_merge", Kokkos::RangePolicy<ExecSpace>(exec, 0, local.extent(0)),
      KOKKOS_LAMBDA(std::size_t i) { local(i) = a * local(i) + b * outer(i); });
}

double clip_factor(double norm, double max_norm) {
  if (max_norm <= 0 || !(norm > max_norm)) return 1.0;
  return max_norm / norm;
}

#define TAPESTRY_INSTANTIATE(T)                                                                 \
  template void adamw_update<T>(const ExecSpace&, View1<T>, View1<T>, View1<T>, In1<T>,        \
                                const AdamWStep&);                                              \
  template double sum_squares<T>(const ExecSpace&, In1<T>);                                     \
  template void pseudo_gradient<T>(const ExecSpace&, In1<T>, In1<T>, View1<T>);                \
  template void outer_sgd_update<T>(const ExecSpace&, View1<T>, View1<T>, In1<T>, const OuterStep&); \
  template void outer_merge<T>(const ExecSpace&, View1<T>, In1<T>, double);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE
template void adamw_fused<std::uint16_t>(const ExecSpace&, Kokkos::View<const AdamWChunk*, Layout, MemSpace>,
                                         View1<float>, View1<float>, View1<float>, View1<float>, const AdamWStep&,
                                         const AdamWExtras<std::uint16_t>&);
template void adamw_fused<float>(const ExecSpace&, Kokkos::View<const AdamWChunk*, Layout, MemSpace>, View1<float>,
                                 View1<float>, View1<float>, View1<float>, const AdamWStep&, const AdamWExtras<float>&);

}  // namespace tapestry::kernels
