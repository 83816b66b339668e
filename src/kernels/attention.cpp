#include "tapestry/kernels/attention.hpp"

#include <stdexcept>

#include "tapestry/kernels/math.hpp"
#include "team.hpp"

namespace tapestry::kernels {

// qkv (B, T, W) with W = (NH + 2 KV) hs: q heads in columns [0, NH hs), then KV key heads, then KV
// value heads. Query head h uses kv head h / g, g = NH / KV (grouped-query attention; g = 1 is
// multi-head). Per (b, h), Q, K, V are (T, hs) matrices with row stride W, so each product is one
// gemm over a strided slice. The q heads j, g + j, 2g + j, ... (one per kv head) form one batch:
// q stride g hs, k/v stride hs, att stride g T^2; g calls cover all heads (one call for MHA),
// each over all B sequences too (Blas::attention_gemm's outer batch: sequence b is T W further
// in qkv, NH T^2 in att and T NH hs in out). On the GPU each is one cuBLAS call.

namespace {
struct Shape {
  int B, T, W, NH, KV, hs, g;
};
// Causal products in row blocks: query rows [r0, r0 + n) need keys [0, r0 + n) only, so the
// blocks above the diagonal are never computed (5/8 of the work at 4 blocks, 9/16 at 8). The
// softmax reads keys <= t and writes every entry, so what those blocks hold is never read.
int causal_rows(int Tn, int block) {
  if (block < 0) throw std::invalid_argument("tapestry::attention: causal_block must be >= 0");
  if (block == 0) block = kCausalBlock;
  return Tn < 2 * block ? Tn : block;  // one block when a split would not save a quarter
}

template <class F> void row_blocks(int Tn, int rows, const F& f) {  // f(r0, n) for each block
  for (int r0 = 0; r0 < Tn; r0 += rows) f(r0, r0 + rows < Tn ? rows : Tn - r0);
}

template <class T> Shape shape_of(const In3<T>& qkv, int NH, int KV) {
  if (KV == 0) KV = NH;
  const int W = int(qkv.extent(2));
  if (NH < 1 || KV < 1 || NH % KV != 0 || W % (NH + 2 * KV) != 0)
    throw std::invalid_argument("tapestry::attention: qkv is not (B, T, (n_head + 2 n_kv_head) head_dim) with n_kv_head dividing n_head");
  return {int(qkv.extent(0)), int(qkv.extent(1)), W, NH, KV, W / (NH + 2 * KV), NH / KV};
}
}  // namespace

template <class T>
void attention_forward(const Blas& blas, View3<T> out, View4<T> att, In3<T> qkv, int NH, int KV, In1<int> doc_pos,
                       int causal_block) {
  const auto s = shape_of<T>(qkv, NH, KV);
  const int rows = causal_rows(s.T, causal_block);
  const int Tn = s.T, W = s.W, hs = s.hs, g = s.g, C = NH * hs, nkv = s.KV;
  const T scale = T(1) / math::sqrt(T(hs));
  const long TT = long(Tn) * Tn;
  const int B = s.B;
  const long seq = long(Tn) * W, seq_att = long(NH) * TT, seq_out = long(Tn) * C;  // one sequence further
  const T* q = qkv.data();
  // att(b, h) (T, T) = scale * Q (T, hs) @ K^T (hs, T): rows [r0, r0 + n) against keys [0, r0 + n)
  for (int j = 0; j < g; ++j)
    row_blocks(Tn, rows, [&](int r0, int n) {
      blas.attention_gemm<T>(false, true, n, r0 + n, hs, scale, q + j * hs + long(r0) * W, W, long(g) * hs, q + C, W,
                             hs, T(0), att.data() + j * TT + long(r0) * Tn, Tn, long(g) * TT, nkv, B, seq, seq, seq_att);
    });
  // Causal (or block-causal) softmax per query row over keys lo..t; every other entry becomes
  // exactly 0.
  if (doc_pos.extent(0) != 0 && doc_pos.extent(0) != std::size_t(s.B) * std::size_t(Tn))
    throw std::invalid_argument("tapestry::attention: doc_pos is not (B*T)");
  const bool masked = doc_pos.extent(0) != 0;
  // Each row through a plain pointer: indexing the 4-d view in the inner loops kept them from
  // vectorizing on hosts (3.5x slower, docs/performance.md).
  T* const a0 = att.data();
  Kokkos::parallel_for(
      "tapestry::attention_softmax_forward", detail::team_per_row(blas.exec(), s.B * NH * Tn),
      KOKKOS_LAMBDA(const detail::Member& m) {
        const int i = m.league_rank(), t = i % Tn, b = i / (Tn * NH);  // row i = (b, h, t)
        T* const row = a0 + long(i) * Tn;
        const int lo = masked ? t - doc_pos(b * Tn + t) : 0;
        const T maxv = detail::team_max<T>(m, t + 1, T(-1e30), [&](int t2) { return t2 >= lo ? row[t2] : T(-1e30); });
        // the exponentials first (a loop that vectorizes), then their sum
        Kokkos::parallel_for(Kokkos::TeamThreadRange(m, t + 1),
                             [&](int t2) { row[t2] = t2 >= lo ? math::vexp(row[t2] - maxv) : T(0); });
        m.team_barrier();
        const T sum = detail::team_sum<T>(m, t + 1, [&](int t2) { return row[t2]; });
        const T inv = T(1) / sum;
        m.team_barrier();  // every thread has read the exponentials
        Kokkos::parallel_for(Kokkos::TeamThreadRange(m, Tn), [&](int t2) { row[t2] = t2 <= t ? row[t2] * inv : T(0); });
      });
  // out(b, :, head h) (T, hs) = att(b, h) (T, T) @ V (T, hs)
  const T* v = qkv.data() + C + long(nkv) * hs;
  for (int j = 0; j < g; ++j)
    row_blocks(Tn, rows, [&](int r0, int n) {
      blas.attention_gemm<T>(false, false, n, hs, r0 + n, T(1), att.data() + j * TT + long(r0) * Tn, Tn, long(g) * TT,
                             v, W, hs, T(0), out.data() + j * hs + long(r0) * C, C, long(g) * hs, nkv, B, seq_att, seq,
                             seq_out);
    });
}

template <class T>
void attention_backward(const Blas& blas, View3<T> dqkv, View4<T> dpre, In3<T> dout, In3<T> qkv,
                        In4<T> att, int NH, int KV, int causal_block) {
  const auto s = shape_of<T>(qkv, NH, KV);
  const int rows = causal_rows(s.T, causal_block);
  const int Tn = s.T, W = s.W, hs = s.hs, g = s.g, C = NH * hs, nkv = s.KV;
  const T scale = T(1) / math::sqrt(T(hs));
  const long TT = long(Tn) * Tn;
  const long koff = C, voff = C + long(nkv) * hs;
  const int B = s.B;
  const long seq = long(Tn) * W, seq_att = long(NH) * TT, seq_out = long(Tn) * C;  // one sequence further
  const T* v = qkv.data() + voff;
  const T* dy = dout.data();
  T* dv = dqkv.data() + voff;
  // Row blocks as in the forward; the products whose rows are keys take key block [k0, k0 + n)
  // against query rows [k0, T) (the rows above hold zeros there).
  for (int j = 0; j < g; ++j) {
    // dV (T, hs) = sum over the group's q heads of att^T (T, T) @ dY (T, hs)
    row_blocks(Tn, rows, [&](int k0, int n) {
      blas.attention_gemm<T>(true, false, n, hs, Tn - k0, T(1), att.data() + j * TT + long(k0) * Tn + k0, Tn,
                             long(g) * TT, dy + j * hs + long(k0) * C, C, long(g) * hs, j == 0 ? T(0) : T(1),
                             dv + long(k0) * W, W, hs, nkv, B, seq_att, seq_out, seq);
    });
    // datt (T, T) = dY (T, hs) @ V^T (hs, T)
    row_blocks(Tn, rows, [&](int r0, int n) {
      blas.attention_gemm<T>(false, true, n, r0 + n, hs, T(1), dy + j * hs + long(r0) * C, C, long(g) * hs, v, W, hs,
                             T(0), dpre.data() + j * TT + long(r0) * Tn, Tn, long(g) * TT, nkv, B, seq_out, seq,
                             seq_att);
    });
  }
  // Softmax backward, in place: dpre = scale * att * (datt - sum_t2 att * datt); 0 above the diagonal.
  // Rows through plain pointers, as in the forward.
  const T* const a0 = att.data();
  T* const d0 = dpre.data();
  Kokkos::parallel_for(
      "tapestry::attention_softmax_backward", detail::team_per_row(blas.exec(), s.B * NH * Tn),
      KOKKOS_LAMBDA(const detail::Member& m) {
        const int i = m.league_rank(), t = i % Tn;  // row i = (b, h, t)
        const T* const p = a0 + long(i) * Tn;
        T* const d = d0 + long(i) * Tn;
        const T dot = detail::team_sum<T>(m, t + 1, [&](int t2) { return p[t2] * d[t2]; });
        Kokkos::parallel_for(Kokkos::TeamThreadRange(m, Tn),
                             [&](int t2) { d[t2] = t2 <= t ? scale * p[t2] * (d[t2] - dot) : T(0); });
      });
  const T* q = qkv.data();
  T* dq = dqkv.data();
  const T* ds = dpre.data();
  for (int j = 0; j < g; ++j) {
    // dQ (T, hs) = dS (T, T) @ K (T, hs);  dK (T, hs) = sum over the group of dS^T (T, T) @ Q (T, hs)
    row_blocks(Tn, rows, [&](int r0, int n) {
      blas.attention_gemm<T>(false, false, n, hs, r0 + n, T(1), ds + j * TT + long(r0) * Tn, Tn, long(g) * TT,
                             q + koff, W, hs, T(0), dq + j * hs + long(r0) * W, W, long(g) * hs, nkv, B, seq_att, seq,
                             seq);
    });
    row_blocks(Tn, rows, [&](int k0, int n) {
      blas.attention_gemm<T>(true, false, n, hs, Tn - k0, T(1), ds + j * TT + long(k0) * Tn + k0, Tn, long(g) * TT,
                             q + j * hs + long(k0) * W, W, long(g) * hs, j == 0 ? T(0) : T(1), dq + koff + long(k0) * W,
                             W, hs, nkv, B, seq_att, seq, seq);
    });
  }
}

#define TAPESTRY_INSTANTIATE(T)                                                                  \
  template void attention_forward<T>(const Blas&, View3<T>, View4<T>, In3<T>, int, int, In1<int>, int); \
  template void attention_backward<T>(const Blas&, View3<T>, View4<T>, In3<T>, In3<T>, In4<T>, \
                                      int, int, int);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
