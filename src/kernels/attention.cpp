#include "tapestry/kernels/attention.hpp"

#include <cstdint>
#include <stdexcept>
#include <string>

#include "tapestry/kernels/bf16.hpp"
#include "tapestry/kernels/elementwise.hpp"
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

namespace {
// The products and the softmax over operands of type E: T itself (the probabilities in place of the
// scores, the scores' gradient in place of the probabilities'), or bf16 words (std::uint16_t) that
// the softmax kernels write and the products read, with fp32 scores and gradients in between.
template <class T>
void mul(const Blas& blas, bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda, long sa, const T* B,
         int ldb, long sb, T beta, T* C, int ldc, long sc, int count, int outer, long oa, long ob, long oc) {
  blas.attention_gemm<T>(ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, count, outer, oa, ob, oc);
}
void mul(const Blas& blas, bool ta, bool tb, int M, int N, int K, float alpha, const std::uint16_t* A, int lda, long sa,
         const std::uint16_t* B, int ldb, long sb, float beta, float* C, int ldc, long sc, int count, int outer, long oa,
         long ob, long oc) {
  blas.attention_gemm_bf16(ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, count, outer, oa, ob, oc);
}
template <class T> KOKKOS_INLINE_FUNCTION T value_of(T x) { return x; }
KOKKOS_INLINE_FUNCTION float value_of(std::uint16_t w) { return from_bf16(w); }
template <class T> KOKKOS_INLINE_FUNCTION void put(T& d, T x) { d = x; }
KOKKOS_INLINE_FUNCTION void put(std::uint16_t& d, float x) { d = to_bf16(x); }

/// scores (B, NH, T, T) = scale Q K^T; probs (same shape, E) = their masked softmax (probs may be
/// the scores themselves); out = probs V. qkv: the products' copy of q, k, v (E).
template <class T, class E>
void forward_impl(const Blas& blas, const Shape& s, int rows, T* out, T* scores, E* probs, const E* qkv,
                  In1<int> doc_pos) {
  const int Tn = s.T, W = s.W, hs = s.hs, g = s.g, NH = s.NH, C = NH * hs, nkv = s.KV;
  const T scale = T(1) / math::sqrt(T(hs));
  const long TT = long(Tn) * Tn;
  const int B = s.B;
  const long seq = long(Tn) * W, seq_att = long(NH) * TT, seq_out = long(Tn) * C;  // one sequence further
  const E* q = qkv;
  // att(b, h) (T, T) = scale * Q (T, hs) @ K^T (hs, T): rows [r0, r0 + n) against keys [0, r0 + n)
  for (int j = 0; j < g; ++j)
    row_blocks(Tn, rows, [&](int r0, int n) {
      mul(blas, false, true, n, r0 + n, hs, scale, q + j * hs + long(r0) * W, W, long(g) * hs, q + C, W, hs, T(0),
          scores + j * TT + long(r0) * Tn, Tn, long(g) * TT, nkv, B, seq, seq, seq_att);
    });
  // Causal (or block-causal) softmax per query row over keys lo..t; every other entry becomes
  // exactly 0.
  if (doc_pos.extent(0) != 0 && doc_pos.extent(0) != std::size_t(s.B) * std::size_t(Tn))
    throw std::invalid_argument("tapestry::attention: doc_pos is not (B*T)");
  const bool masked = doc_pos.extent(0) != 0;
  // Each row through a plain pointer: indexing the 4-d view in the inner loops kept them from
  // vectorizing on hosts (3.5x slower, docs/performance.md).
  T* const a0 = scores;
  E* const p0 = probs;
  Kokkos::parallel_for(
      "tapestry::attention_softmax_forward", detail::team_per_row(blas.exec(), s.B * NH * Tn),
      KOKKOS_LAMBDA(const detail::Member& m) {
        const int i = m.league_rank(), t = i % Tn, b = i / (Tn * NH);  // row i = (b, h, t)
        T* const row = a0 + long(i) * Tn;
        E* const prow = p0 + long(i) * Tn;
        const int lo = masked ? t - doc_pos(b * Tn + t) : 0;
        const T maxv = detail::team_max<T>(m, t + 1, T(-1e30), [&](int t2) { return t2 >= lo ? row[t2] : T(-1e30); });
        // the exponentials first (a loop that vectorizes), then their sum
        Kokkos::parallel_for(Kokkos::TeamThreadRange(m, t + 1),
                             [&](int t2) { row[t2] = t2 >= lo ? math::vexp(row[t2] - maxv) : T(0); });
        m.team_barrier();
        const T sum = detail::team_sum<T>(m, t + 1, [&](int t2) { return row[t2]; });
        const T inv = T(1) / sum;
        m.team_barrier();  // every thread has read the exponentials
        Kokkos::parallel_for(Kokkos::TeamThreadRange(m, Tn), [&](int t2) { put(prow[t2], t2 <= t ? row[t2] * inv : T(0)); });
      });
  // out(b, :, head h) (T, hs) = att(b, h) (T, T) @ V (T, hs)
  const E* v = qkv + C + long(nkv) * hs;
  for (int j = 0; j < g; ++j)
    row_blocks(Tn, rows, [&](int r0, int n) {
      mul(blas, false, false, n, hs, r0 + n, T(1), probs + j * TT + long(r0) * Tn, Tn, long(g) * TT, v, W, hs, T(0),
          out + j * hs + long(r0) * C, C, long(g) * hs, nkv, B, seq_att, seq, seq_out);
    });
}

/// dqkv from dy (the output's gradient) and the forward's probs, all operands E as in forward_impl;
/// dp (T x T per head, fp32) takes the probabilities' gradient, ds (E) the scores' (ds may be dp).
template <class T, class E>
void backward_impl(const Blas& blas, const Shape& s, int rows, T* dqkv, T* dp, E* ds, const E* dy, const E* qkv,
                   const E* probs) {
  const int Tn = s.T, W = s.W, hs = s.hs, g = s.g, NH = s.NH, C = NH * hs, nkv = s.KV;
  const T scale = T(1) / math::sqrt(T(hs));
  const long TT = long(Tn) * Tn;
  const long koff = C, voff = C + long(nkv) * hs;
  const int B = s.B;
  const long seq = long(Tn) * W, seq_att = long(NH) * TT, seq_out = long(Tn) * C;  // one sequence further
  const E* v = qkv + voff;
  T* dv = dqkv + voff;
  // Row blocks as in the forward; the products whose rows are keys take key block [k0, k0 + n)
  // against query rows [k0, T) (the rows above hold zeros there).
  for (int j = 0; j < g; ++j) {
    // dV (T, hs) = sum over the group's q heads of att^T (T, T) @ dY (T, hs)
    row_blocks(Tn, rows, [&](int k0, int n) {
      mul(blas, true, false, n, hs, Tn - k0, T(1), probs + j * TT + long(k0) * Tn + k0, Tn, long(g) * TT,
          dy + j * hs + long(k0) * C, C, long(g) * hs, j == 0 ? T(0) : T(1), dv + long(k0) * W, W, hs, nkv, B, seq_att,
          seq_out, seq);
    });
    // datt (T, T) = dY (T, hs) @ V^T (hs, T)
    row_blocks(Tn, rows, [&](int r0, int n) {
      mul(blas, false, true, n, r0 + n, hs, T(1), dy + j * hs + long(r0) * C, C, long(g) * hs, v, W, hs, T(0),
          dp + j * TT + long(r0) * Tn, Tn, long(g) * TT, nkv, B, seq_out, seq, seq_att);
    });
  }
  // Softmax backward: ds = scale * att * (datt - sum_t2 att * datt); 0 above the diagonal. Rows
  // through plain pointers, as in the forward.
  const E* const a0 = probs;
  const T* const d0 = dp;
  E* const s0 = ds;
  Kokkos::parallel_for(
      "tapestry::attention_softmax_backward", detail::team_per_row(blas.exec(), s.B * NH * Tn),
      KOKKOS_LAMBDA(const detail::Member& m) {
        const int i = m.league_rank(), t = i % Tn;  // row i = (b, h, t)
        const E* const p = a0 + long(i) * Tn;
        const T* const d = d0 + long(i) * Tn;
        E* const out = s0 + long(i) * Tn;
        const T dot = detail::team_sum<T>(m, t + 1, [&](int t2) { return value_of(p[t2]) * d[t2]; });
        Kokkos::parallel_for(Kokkos::TeamThreadRange(m, Tn), [&](int t2) {
          put(out[t2], t2 <= t ? scale * value_of(p[t2]) * (d[t2] - dot) : T(0));
        });
      });
  const E* q = qkv;
  for (int j = 0; j < g; ++j) {
    // dQ (T, hs) = dS (T, T) @ K (T, hs);  dK (T, hs) = sum over the group of dS^T (T, T) @ Q (T, hs)
    row_blocks(Tn, rows, [&](int r0, int n) {
      mul(blas, false, false, n, hs, r0 + n, T(1), ds + j * TT + long(r0) * Tn, Tn, long(g) * TT, q + koff, W, hs,
          T(0), dqkv + j * hs + long(r0) * W, W, long(g) * hs, nkv, B, seq_att, seq, seq);
    });
    row_blocks(Tn, rows, [&](int k0, int n) {
      mul(blas, true, false, n, hs, Tn - k0, T(1), ds + j * TT + long(k0) * Tn + k0, Tn, long(g) * TT,
          q + j * hs + long(k0) * W, W, long(g) * hs, j == 0 ? T(0) : T(1), dqkv + koff + long(k0) * W, W, hs, nkv, B,
          seq_att, seq, seq);
    });
  }
}

/// Elements of the (B, NH, T, T) matrices.
std::size_t square_elements(const Shape& s) {
  return std::size_t(s.B) * std::size_t(s.NH) * std::size_t(s.T) * std::size_t(s.T);
}
void check_words(const Words& w, std::size_t n, const char* what) {
  if (w.extent(0) < n) throw std::invalid_argument(std::string("tapestry::attention: bf16 ") + what + " is too short");
}
/// n floats at x rounded into the first n words of w.
void round_words(const ExecSpace& exec, const Words& w, const float* x, std::size_t n, const char* what) {
  check_words(w, n, what);
  store_bf16(exec, Words(w.data(), n), In1<float>(x, n));
}
/// What both bf16 entry points do first: the shape, the T x T buffers' lengths checked (scratch,
/// h.probs), and q, k, v rounded into h.qkv unless written there already.
Shape bf16_prologue(const Blas& blas, const View4<float>& scratch, const AttentionBf16& h, const In3<float>& qkv,
                    int NH, int KV) {
  const auto s = shape_of<float>(qkv, NH, KV);
  const std::size_t tt = square_elements(s);
  if (scratch.span() < tt) throw std::invalid_argument("tapestry::attention: the fp32 scratch is not (B, NH, T, T)");
  check_words(h.probs, tt, "probs");
  if (h.qkv_written) check_words(h.qkv, qkv.span(), "qkv");
  else round_words(blas.exec(), h.qkv, qkv.data(), qkv.span(), "qkv");
  return s;
}
}  // namespace

template <class T>
void attention_forward(const Blas& blas, View3<T> out, View4<T> att, In3<T> qkv, int NH, int KV, In1<int> doc_pos,
                       int causal_block) {
  const auto s = shape_of<T>(qkv, NH, KV);
  forward_impl<T, T>(blas, s, causal_rows(s.T, causal_block), out.data(), att.data(), att.data(), qkv.data(), doc_pos);
}

template <class T>
void attention_backward(const Blas& blas, View3<T> dqkv, View4<T> dpre, In3<T> dout, In3<T> qkv,
                        In4<T> att, int NH, int KV, int causal_block) {
  const auto s = shape_of<T>(qkv, NH, KV);
  backward_impl<T, T>(blas, s, causal_rows(s.T, causal_block), dqkv.data(), dpre.data(), dpre.data(), dout.data(),
                      qkv.data(), att.data());
}

void attention_forward_bf16(const Blas& blas, View3<float> out, View4<float> scores, const AttentionBf16& h,
                            In3<float> qkv, int NH, int KV, In1<int> doc_pos, int causal_block) {
  const Shape s = bf16_prologue(blas, scores, h, qkv, NH, KV);
  forward_impl<float, std::uint16_t>(blas, s, causal_rows(s.T, causal_block), out.data(), scores.data(), h.probs.data(),
                                     h.qkv.data(), doc_pos);
}

void attention_backward_bf16(const Blas& blas, View3<float> dqkv, View4<float> scratch, const AttentionBf16& h,
                             In3<float> dout, In3<float> qkv, int NH, int KV, int causal_block) {
  const Shape s = bf16_prologue(blas, scratch, h, qkv, NH, KV);
  check_words(h.dscores, square_elements(s), "dscores");
  round_words(blas.exec(), h.dout, dout.data(), dout.span(), "dout");
  backward_impl<float, std::uint16_t>(blas, s, causal_rows(s.T, causal_block), dqkv.data(), scratch.data(),
                                      h.dscores.data(), h.dout.data(), h.qkv.data(), h.probs.data());
}

#define TAPESTRY_INSTANTIATE(T)                                                                  \
  template void attention_forward<T>(const Blas&, View3<T>, View4<T>, In3<T>, int, int, In1<int>, int); \
  template void attention_backward<T>(const Blas&, View3<T>, View4<T>, In3<T>, In3<T>, In4<T>, \
                                      int, int, int);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
