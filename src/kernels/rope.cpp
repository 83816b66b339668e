#include "tapestry/kernels/rope.hpp"

#include <cmath>
#include <stdexcept>

#include "tapestry/kernels/math.hpp"

namespace tapestry::kernels {

std::vector<double> rope_inv_freq(int head_dim, double theta, const RopeScaling& scaling) {
  if (head_dim < 2 || head_dim % 2 != 0 || !(theta > 0))
    throw std::invalid_argument("tapestry::rope_inv_freq: head_dim must be even and positive, theta positive");
  const int half = head_dim / 2;
  std::vector<double> f(static_cast<std::size_t>(half));
  for (int i = 0; i < half; ++i) f[std::size_t(i)] = 1.0 / std::pow(theta, double(2 * i) / head_dim);
  if (!scaling.llama3) return f;
  // transformers' _compute_llama3_parameters
  const double orig = scaling.original_context, lo = scaling.low_freq_factor, hi = scaling.high_freq_factor;
  if (!(scaling.factor > 0) || !(hi > lo) || !(orig > 0))
    throw std::invalid_argument("tapestry::rope_inv_freq: llama3 scaling needs factor > 0, high_freq_factor > "
                                "low_freq_factor and original_context > 0");
  const double low_freq_wavelen = orig / lo, high_freq_wavelen = orig / hi;
  const double pi = 3.14159265358979323846;
  for (auto& inv : f) {
    const double wavelen = 2 * pi / inv;
    if (wavelen > low_freq_wavelen) {
      inv = inv / scaling.factor;  // long wavelengths: interpolated by factor
    } else if (!(wavelen < high_freq_wavelen)) {
      const double smooth = (orig / wavelen - lo) / (hi - lo);  // medium: blended
      inv = (1 - smooth) * inv / scaling.factor + smooth * inv;
    }  // short wavelengths: unchanged
  }
  return f;
}

template <class T>
void rope_apply(const ExecSpace& exec, View2<T> x, Kokkos::View<const int*, Layout, MemSpace> pos,
                Kokkos::View<const double*, Layout, MemSpace> inv_freq, int c0, int nh, int hd, bool inverse) {
  const int N = int(x.extent(0)), half = hd / 2;
  const double sign = inverse ? -1.0 : 1.0;
  // One work item per (row, frequency): the angle's cos and sin serve all nh heads.
  Kokkos::parallel_for(
      "tapestry::rope_apply", Kokkos::RangePolicy<ExecSpace>(exec, 0, std::size_t(N) * std::size_t(half)),
      KOKKOS_LAMBDA(std::size_t k) {
        const int n = int(k / std::size_t(half)), i = int(k % std::size_t(half));
        const double a = double(pos(n)) * inv_freq(i);
        const T c = T(math::cos(a)), s = T(sign * math::sin(a));
        for (int h = 0; h < nh; ++h) {
          const int o = c0 + h * hd + i;
          const T x1 = x(n, o), x2 = x(n, o + half);
          x(n, o) = x1 * c - x2 * s;
          x(n, o + half) = x2 * c + x1 * s;
        }
      });
}

#define TAPESTRY_INSTANTIATE(T)                                                                        \
  template void rope_apply<T>(const ExecSpace&, View2<T>, Kokkos::View<const int*, Layout, MemSpace>, \
                              Kokkos::View<const double*, Layout, MemSpace>, int, int, int, bool);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
