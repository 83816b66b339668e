#include "tapestry/kernels/embedding.hpp"

namespace tapestry::kernels {

template <class T>
void embedding_forward(const ExecSpace& exec, View3<T> out, ConstTokenView tokens, In2<T> wte,
                       In2<T> wpe, int vocab_begin, bool with_position) {
  const int B = int(out.extent(0)), Tn = int(out.extent(1)), C = int(out.extent(2));
  const int rows = int(wte.extent(0));
  Kokkos::parallel_for(
      "tapestry::embedding_forward",
      Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<3>>(exec, {0, 0, 0}, {B, Tn, C}),
      KOKKOS_LAMBDA(int b, int t, int c) {
        const int v = tokens(b, t) - vocab_begin;
        const T e = v >= 0 && v < rows ? wte(v, c) : T(0);
        out(b, t, c) = with_position ? e + wpe(t, c) : e;
      });
}

template <class T>
void embedding_backward(const ExecSpace& exec, View2<T> dwte, View2<T> dwpe, In3<T> dout,
                        ConstTokenView tokens, int vocab_begin) {
  const int B = int(dout.extent(0)), Tn = int(dout.extent(1)), C = int(dout.extent(2));
  const int rows = int(dwte.extent(0));
  // Each work item owns one channel c, so scattered rows never collide.
  Kokkos::parallel_for(
      "tapestry::embedding_backward_wte", Kokkos::RangePolicy<ExecSpace>(exec, 0, C),
      KOKKOS_LAMBDA(int c) {
        for (int b = 0; b < B; ++b)
          for (int t = 0; t < Tn; ++t) {
            const int v = tokens(b, t) - vocab_begin;
            if (v >= 0 && v < rows) dwte(v, c) += dout(b, t, c);
          }
      });
  Kokkos::parallel_for(
      "tapestry::embedding_backward_wpe",
      Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>(exec, {0, 0}, {Tn, C}),
      KOKKOS_LAMBDA(int t, int c) {
        T s = 0;
        for (int b = 0; b < B; ++b) s += dout(b, t, c);
        dwpe(t, c) += s;
      });
}

#define TAPESTRY_INSTANTIATE(T)                                                                 \
  template void embedding_forward<T>(const ExecSpace&, View3<T>, ConstTokenView, In2<T>, In2<T>, int, bool); \
  template void embedding_backward<T>(const ExecSpace&, View2<T>, View2<T>, In3<T>, ConstTokenView, int);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
