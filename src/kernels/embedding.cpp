#include "tapestry/kernels/embedding.hpp"

#include "team.hpp"

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

void TokenRows::build(const ExecSpace& exec, const std::vector<int>& tokens, int vocab_begin, int rows) {
  // Counting sort by row: stable, so each group's positions stay in increasing order.
  std::vector<int> count(std::size_t(rows) + 1, 0);
  for (int t : tokens)
    if (t - vocab_begin >= 0 && t - vocab_begin < rows) ++count[std::size_t(t - vocab_begin) + 1];
  std::vector<int> hrow, hstart{0};
  for (int r = 0; r < rows; ++r)
    if (count[std::size_t(r) + 1] > 0) hrow.push_back(r), hstart.push_back(hstart.back() + count[std::size_t(r) + 1]);
  for (int r = 0; r < rows; ++r) count[std::size_t(r) + 1] += count[std::size_t(r)];
  std::vector<int> hpos(std::size_t(hstart.back()));
  for (int i = 0; i < int(tokens.size()); ++i) {
    const int r = tokens[std::size_t(i)] - vocab_begin;
    if (r >= 0 && r < rows) hpos[std::size_t(count[std::size_t(r)]++)] = i;
  }
  groups = int(hrow.size());
  auto upload = [&](Kokkos::View<int*, Layout, MemSpace>& dev, const std::vector<int>& h, const char* name) {
    if (dev.extent(0) < h.size()) dev = Kokkos::View<int*, Layout, MemSpace>(std::string(name), h.size());
    Kokkos::View<const int*, Layout, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> hv(h.data(), h.size());
    Kokkos::deep_copy(exec, Kokkos::subview(dev, std::pair<std::size_t, std::size_t>(0, h.size())), hv);
  };
  upload(row, hrow, "tapestry::token_rows_row");
  upload(start, hstart, "tapestry::token_rows_start");
  upload(pos, hpos, "tapestry::token_rows_pos");
  exec.fence();  // the host vectors go out of scope
}

template <class T>
void embedding_backward(const ExecSpace& exec, View2<T> dwte, View2<T> dwpe, In3<T> dout, const TokenRows& rows_of) {
  const int B = int(dout.extent(0)), Tn = int(dout.extent(1)), C = int(dout.extent(2));
  const auto row = rows_of.row;
  const auto start = rows_of.start;
  const auto pos = rows_of.pos;
  const T* d = dout.data();
  // One team per row that occurs; its channels over the team; its positions in order.
  Kokkos::parallel_for(
      "tapestry::embedding_backward_wte", detail::team_per_row(exec, rows_of.groups),
      KOKKOS_LAMBDA(const detail::Member& m) {
        const int g = m.league_rank(), v = row(g), p0 = start(g), p1 = start(g + 1);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(m, C), [&](int c) {
          T acc = dwte(v, c);
          for (int p = p0; p < p1; ++p) acc += d[std::size_t(pos(p)) * std::size_t(C) + std::size_t(c)];
          dwte(v, c) = acc;
        });
      });
  if (dwpe.extent(0) == 0) return;  // no learned positions (RoPE)
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
  template void embedding_backward<T>(const ExecSpace&, View2<T>, View2<T>, In3<T>, const TokenRows&);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
