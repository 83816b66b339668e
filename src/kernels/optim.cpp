#include "tapestry/kernels/optim.hpp"

#include <cmath>

#include "tapestry/kernels/math.hpp"

namespace tapestry::kernels {

template <class T>
void adamw_update(const ExecSpace& exec, View1<T> param, View1<T> m, View1<T> v, In1<T> grad,
                  const AdamWStep& s) {
  const T lr = T(s.lr), b1 = T(s.beta1), b2 = T(s.beta2), eps = T(s.eps), wd = T(s.weight_decay);
  const T gs = T(s.grad_scale);
  const T c1 = T(1.0 / (1.0 - std::pow(s.beta1, double(s.t))));
  const T c2 = T(1.0 / (1.0 - std::pow(s.beta2, double(s.t))));
  Kokkos::parallel_for(
      "tapestry::adamw_update", Kokkos::RangePolicy<ExecSpace>(exec, 0, param.extent(0)),
      KOKKOS_LAMBDA(std::size_t i) {
        const T g = grad(i) * gs;
        const T mi = b1 * m(i) + (T(1) - b1) * g;
        const T vi = b2 * v(i) + (T(1) - b2) * g * g;
        m(i) = mi;
        v(i) = vi;
        param(i) -= lr * ((mi * c1) / (math::sqrt(vi * c2) + eps) + wd * param(i));
      });
}

template <class T> double sum_squares(const ExecSpace& exec, In1<T> x) {
  // Each work item sums a block with kLanes independent partial sums: on hosts the inner loop
  // vectorizes (a single running sum is a serial dependency chain); on GPUs blocks are threads.
  constexpr std::size_t kLanes = 8, kBlock = 1024;
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

}  // namespace tapestry::kernels
