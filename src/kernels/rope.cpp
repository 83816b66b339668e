#include "tapestry/kernels/rope.hpp"

#include <cmath>
#include <stdexcept>

#include "tapestry/kernels/math.hpp"
#include "team.hpp"

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
void rope_table(const ExecSpace& exec, View2<T> cos, View2<T> sin, Kokkos::View<const double*, Layout, MemSpace> inv_freq) {
  const std::size_t half = inv_freq.extent(0);
  if (cos.extent(1) != half || sin.extent(1) != half || sin.extent(0) != cos.extent(0))
    throw std::invalid_argument("tapestry::rope_table: cos and sin must be (positions, head_dim / 2)");
  Kokkos::parallel_for(
      "tapestry::rope_table", Kokkos::RangePolicy<ExecSpace>(exec, 0, cos.extent(0) * half), KOKKOS_LAMBDA(std::size_t k) {
        const std::size_t p = k / half, i = k % half;
        const double a = double(p) * inv_freq(i);
        cos(p, i) = T(math::cos(a));
        sin(p, i) = T(math::sin(a));
      });
}

template <class T>
void rope_apply(const ExecSpace& exec, View2<T> x, Kokkos::View<const int*, Layout, MemSpace> pos, In2<T> cos, In2<T> sin,
                int c0, int nh, int hd, bool inverse) {
  const int N = int(x.extent(0)), half = hd / 2;
  if (int(cos.extent(1)) != half || int(sin.extent(1)) != half)
    throw std::invalid_argument("tapestry::rope_apply: the table's rows are not head_dim / 2 wide");
  const T sign = inverse ? T(-1) : T(1);
  // One team per row; on hosts its heads in order, each a loop over plain pointers that vectorizes
  // (the table's row serves every head); on GPUs the (head, frequency) pairs over the threads.
  Kokkos::parallel_for(
      "tapestry::rope_apply", detail::team_per_row(exec, N), KOKKOS_LAMBDA(const detail::Member& tm) {
        const int n = tm.league_rank();
        const T* c = &cos(pos(n), 0);
        const T* s = &sin(pos(n), 0);
        T* row = &x(n, c0);
        // (nvcc: a device lambda must not capture a variable first inside `if constexpr`)
        const int heads = nh, width = hd, h2 = half;
        const T sg = sign;
        if constexpr (detail::kHostTeams) {
          Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, heads), [&](int h) {
            T* a = row + h * width;
            T* b = a + h2;
            for (int i = 0; i < h2; ++i) {
              const T x1 = a[i], x2 = b[i], si = sg * s[i];
              a[i] = x1 * c[i] - x2 * si;
              b[i] = x2 * c[i] + x1 * si;
            }
          });
        } else {
          Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, heads * h2), [&](int j) {
            const int h = j / h2, i = j % h2;
            T* a = row + h * width;
            const T x1 = a[i], x2 = a[i + h2], si = sg * s[i];
            a[i] = x1 * c[i] - x2 * si;
            a[i + h2] = x2 * c[i] + x1 * si;
          });
        }
      });
}

#define TAPESTRY_INSTANTIATE(T)                                                                                     \
  template void rope_table<T>(const ExecSpace&, View2<T>, View2<T>, Kokkos::View<const double*, Layout, MemSpace>); \
  template void rope_apply<T>(const ExecSpace&, View2<T>, Kokkos::View<const int*, Layout, MemSpace>, In2<T>, In2<T>, \
                              int, int, int, bool);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
