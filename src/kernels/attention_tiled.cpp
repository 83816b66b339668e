#include "tapestry/kernels/attention_tiled.hpp"

#include <cmath>
#include <stdexcept>

#include "tapestry/kernels/math.hpp"
#include "team.hpp"

namespace tapestry::kernels {

namespace {
using Team = Kokkos::TeamPolicy<ExecSpace>;
using Member = Team::member_type;
template <class T>
using Tile = Kokkos::View<T**, Kokkos::LayoutRight, ExecSpace::scratch_memory_space, Kokkos::MemoryUnmanaged>;
template <class T>
using Row = Kokkos::View<T*, Kokkos::LayoutRight, ExecSpace::scratch_memory_space, Kokkos::MemoryUnmanaged>;

constexpr int kTile = kAttnTile;
// Team scratch level 0 is the GPU's shared memory (48 KiB a block on CUDA without opt-in, less what
// Kokkos reserves): the backward's tiles exceed it from head size 64 in fp32. Larger tiles go to level 1
// (global memory, per team) instead of failing at launch.
inline int scratch_level(std::size_t bytes) { return bytes <= std::size_t(Team::scratch_size_max(0)) ? 0 : 1; }

/// Heads and widths of the packed qkv (B, T, (NH + 2 KV) hd): q heads in columns [0, C), C = NH hd,
/// then KV key heads from column C, then KV value heads from column C + KV hd; query head h uses kv
/// head h / g, g = NH / KV.
struct Heads {
  int NH, KV, g, hd, C, kvC;
};
inline Heads heads_of(int n_head, int n_kv_head, std::size_t width_out, std::size_t width_qkv) {
  const int NH = n_head, KV = n_kv_head == 0 ? n_head : n_kv_head;
  if (NH < 1 || KV < 1 || NH % KV != 0 || width_out % std::size_t(NH) != 0)
    throw std::invalid_argument("tapestry::attention_tiled: n_kv_head must divide n_head, and n_head the width of out");
  const int hd = int(width_out) / NH;
  if (width_qkv != std::size_t(NH + 2 * KV) * std::size_t(hd))
    throw std::invalid_argument("tapestry::attention_tiled: qkv is not (B, T, (n_head + 2 n_kv_head) head_dim)");
  return {NH, KV, NH / KV, hd, NH * hd, KV * hd};
}

/// Key tile [k0, k0 + cols) of kv head g into scratch: K from column C + g hd of the packed qkv,
/// V from column C + kvC + g hd.
template <class T>
KOKKOS_INLINE_FUNCTION void load_key_tile(const Member& tm, const In3<T>& qkv, int C, int kvC, int hd, int b, int g,
                                          int k0, int cols, const Tile<T>& K, const Tile<T>& V) {
  Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, cols * hd), [&](int e) {
    const int c = e / hd, d = e % hd;
    K(c, d) = qkv(b, k0 + c, C + g * hd + d);
    V(c, d) = qkv(b, k0 + c, C + kvC + g * hd + d);
  });
}

/// sum over d < n of a[d] * b[d] (rows of scratch tiles through plain pointers: indexing the tile
/// views in the inner loops kept them from vectorizing on hosts). On hosts 8 partial sums, so the
/// loop vectorizes; on GPUs one thread's running sum as before.
template <class T> KOKKOS_INLINE_FUNCTION T dot(const T* a, const T* b, int n) {
  if constexpr (detail::kHostTeams) {
    return detail::lane_sum<T>(0, n, [&](int d) { return a[d] * b[d]; });
  } else {
    T acc = 0;
    for (int d = 0; d < n; ++d) acc += a[d] * b[d];
    return acc;
  }
}

/// Whether doc_pos masks (not empty); throws when it is not (B*T).
inline bool check_doc_pos(const In1<int>& doc_pos, int B, int Tn) {
  if (doc_pos.extent(0) != 0 && doc_pos.extent(0) != std::size_t(B) * std::size_t(Tn))
    throw std::invalid_argument("tapestry::attention_tiled: doc_pos is not (B*T)");
  return doc_pos.extent(0) != 0;
}
}  // namespace

template <class T>
void attention_tiled_forward(const ExecSpace& exec, View3<T> out, View3<T> lse, In3<T> qkv, int n_head,
                             int n_kv_head, In1<int> doc_pos) {
  const Heads sh = heads_of(n_head, n_kv_head, out.extent(2), qkv.extent(2));
  const int B = int(qkv.extent(0)), Tn = int(qkv.extent(1)), NH = sh.NH, G = sh.g, hd = sh.hd, C = sh.C, kvC = sh.kvC;
  const bool masked = check_doc_pos(doc_pos, B, Tn);
  const int tiles = (Tn + kTile - 1) / kTile;
  const T scale = T(1) / math::sqrt(T(hd));
  const std::size_t bytes = 4 * Tile<T>::shmem_size(kTile, hd) + 2 * Row<T>::shmem_size(kTile);
  const int lvl = scratch_level(bytes);
  Team policy(exec, B * NH * tiles, Kokkos::AUTO);
  Kokkos::parallel_for(
      "tapestry::attention_tiled_forward", policy.set_scratch_size(lvl, Kokkos::PerTeam(bytes)),
      KOKKOS_LAMBDA(const Member& tm) {
        const int qt = tm.league_rank() % tiles, h = (tm.league_rank() / tiles) % NH, b = tm.league_rank() / (tiles * NH);
        const int q0 = qt * kTile, rows = Tn - q0 < kTile ? Tn - q0 : kTile;
        Tile<T> Q(tm.team_scratch(lvl), kTile, hd), O(tm.team_scratch(lvl), kTile, hd);
        Tile<T> K(tm.team_scratch(lvl), kTile, hd), V(tm.team_scratch(lvl), kTile, hd);
        Row<T> M(tm.team_scratch(lvl), kTile), L(tm.team_scratch(lvl), kTile);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, rows * hd), [&](int e) {
          const int r = e / hd, d = e % hd;
          Q(r, d) = qkv(b, q0 + r, h * hd + d) * scale;
          O(r, d) = 0;
          if (d == 0) M(r) = T(-1e30), L(r) = 0;
        });
        const int last_key = q0 + rows - 1;
        for (int k0 = 0; k0 <= last_key; k0 += kTile) {
          const int cols = Tn - k0 < kTile ? Tn - k0 : kTile;
          tm.team_barrier();
          load_key_tile<T>(tm, qkv, C, kvC, hd, b, h / G, k0, cols, K, V);
          tm.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, rows), [&](int r) {
            const int qi = q0 + r, ncols = qi - k0 + 1 < cols ? qi - k0 + 1 : cols;  // causal
            const int lo = masked ? qi - doc_pos(b * Tn + qi) : 0, c0 = lo > k0 ? lo - k0 : 0;  // its document
            if (ncols <= c0) return;
            T s[kTile];
            T mx = M(r);
            const T* const qr = &Q(r, 0);
            T* const o = &O(r, 0);
            for (int c = c0; c < ncols; ++c) {
              const T acc = dot(qr, &K(c, 0), hd);
              s[c] = acc;
              mx = acc > mx ? acc : mx;
            }
            const T alpha = math::vexp(M(r) - mx);
            T l = L(r) * alpha;
            for (int d = 0; d < hd; ++d) o[d] *= alpha;
            for (int c = c0; c < ncols; ++c) {
              const T p = math::vexp(s[c] - mx);
              l += p;
              const T* const v = &V(c, 0);
              for (int d = 0; d < hd; ++d) o[d] += p * v[d];
            }
            M(r) = mx;
            L(r) = l;
          });
        }
        tm.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, rows * hd), [&](int e) {
          const int r = e / hd, d = e % hd;
          out(b, q0 + r, h * hd + d) = O(r, d) / L(r);
          if (d == 0) lse(b, h, q0 + r) = M(r) + math::log(L(r));
        });
      });
}

template <class T>
void attention_tiled_backward(const ExecSpace& exec, View3<T> dqkv, In3<T> dout, In3<T> qkv, In3<T> out,
                              In3<T> lse, int n_head, int n_kv_head, In1<int> doc_pos) {
  const Heads sh = heads_of(n_head, n_kv_head, dout.extent(2), qkv.extent(2));
  const int B = int(qkv.extent(0)), Tn = int(qkv.extent(1)), NH = sh.NH, KV = sh.KV, G = sh.g, hd = sh.hd, C = sh.C,
            kvC = sh.kvC;
  const bool masked = check_doc_pos(doc_pos, B, Tn);
  const int tiles = (Tn + kTile - 1) / kTile;
  const T scale = T(1) / math::sqrt(T(hd));
  const std::size_t bytes = 6 * Tile<T>::shmem_size(kTile, hd) + 2 * Row<T>::shmem_size(kTile);
  const int lvl = scratch_level(bytes);
  // A query tile into scratch: Q (unscaled), dO, and per row lse and D = sum(dO * O).
  auto load_queries = KOKKOS_LAMBDA(const Member& tm, int b, int h, int q0, int rows, Tile<T> Q, Tile<T> dO, Row<T> LSE,
                          Row<T> D) {
    Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, rows), [&](int r) {
      T dsum = 0;
      for (int d = 0; d < hd; ++d) {
        Q(r, d) = qkv(b, q0 + r, h * hd + d);
        dO(r, d) = dout(b, q0 + r, h * hd + d);
        dsum += dO(r, d) * out(b, q0 + r, h * hd + d);
      }
      LSE(r) = lse(b, h, q0 + r);
      D(r) = dsum;
    });
  };
  // 1) per key tile of kv head g: dK and dV over every query tile at or after it, of each query head
  //    of g's group in turn (a fixed order, no atomics)
  Team kv_policy(exec, B * KV * tiles, Kokkos::AUTO);
  Kokkos::parallel_for(
      "tapestry::attention_tiled_backward_dkv", kv_policy.set_scratch_size(lvl, Kokkos::PerTeam(bytes)),
      KOKKOS_LAMBDA(const Member& tm) {
        const int kt = tm.league_rank() % tiles, g = (tm.league_rank() / tiles) % KV, b = tm.league_rank() / (tiles * KV);
        const int k0 = kt * kTile, cols = Tn - k0 < kTile ? Tn - k0 : kTile;
        Tile<T> K(tm.team_scratch(lvl), kTile, hd), V(tm.team_scratch(lvl), kTile, hd);
        Tile<T> dK(tm.team_scratch(lvl), kTile, hd), dV(tm.team_scratch(lvl), kTile, hd);
        Tile<T> Q(tm.team_scratch(lvl), kTile, hd), dO(tm.team_scratch(lvl), kTile, hd);
        Row<T> LSE(tm.team_scratch(lvl), kTile), D(tm.team_scratch(lvl), kTile);
        load_key_tile<T>(tm, qkv, C, kvC, hd, b, g, k0, cols, K, V);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, cols * hd), [&](int e) { dK(e / hd, e % hd) = dV(e / hd, e % hd) = 0; });
        for (int h = g * G; h < (g + 1) * G; ++h) {
          for (int q0 = k0; q0 < Tn; q0 += kTile) {
            const int rows = Tn - q0 < kTile ? Tn - q0 : kTile;
            tm.team_barrier();
            load_queries(tm, b, h, q0, rows, Q, dO, LSE, D);
            tm.team_barrier();
            Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, cols), [&](int c) {  // this thread's key row
              const T *const kc = &K(c, 0), *const vc = &V(c, 0);
              T *const dk = &dK(c, 0), *const dv = &dV(c, 0);
              for (int r = 0; r < rows; ++r) {
                if (q0 + r < k0 + c) continue;  // causal
                if (masked && k0 + c < q0 + r - doc_pos(b * Tn + q0 + r)) continue;  // another document
                const T *const qr = &Q(r, 0), *const gr = &dO(r, 0);
                const T sc = dot(qr, kc, hd), dp = dot(gr, vc, hd);
                const T p = math::vexp(sc * scale - LSE(r)), ds = p * (dp - D(r)) * scale;
                for (int d = 0; d < hd; ++d) dv[d] += p * gr[d];
                for (int d = 0; d < hd; ++d) dk[d] += ds * qr[d];
              }
            });
          }
        }
        tm.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, cols * hd), [&](int e) {
          const int c = e / hd, d = e % hd;
          dqkv(b, k0 + c, C + g * hd + d) = dK(c, d);
          dqkv(b, k0 + c, C + kvC + g * hd + d) = dV(c, d);
        });
      });
  // 2) per query tile: dQ over every key tile at or before it
  Team policy(exec, B * NH * tiles, Kokkos::AUTO);
  Kokkos::parallel_for(
      "tapestry::attention_tiled_backward_dq", policy.set_scratch_size(lvl, Kokkos::PerTeam(bytes)),
      KOKKOS_LAMBDA(const Member& tm) {
        const int qt = tm.league_rank() % tiles, h = (tm.league_rank() / tiles) % NH, b = tm.league_rank() / (tiles * NH);
        const int q0 = qt * kTile, rows = Tn - q0 < kTile ? Tn - q0 : kTile;
        Tile<T> K(tm.team_scratch(lvl), kTile, hd), V(tm.team_scratch(lvl), kTile, hd);
        Tile<T> dQ(tm.team_scratch(lvl), kTile, hd), Q(tm.team_scratch(lvl), kTile, hd), dO(tm.team_scratch(lvl), kTile, hd);
        Row<T> LSE(tm.team_scratch(lvl), kTile), D(tm.team_scratch(lvl), kTile);
        load_queries(tm, b, h, q0, rows, Q, dO, LSE, D);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, rows * hd), [&](int e) { dQ(e / hd, e % hd) = 0; });
        for (int k0 = 0; k0 < q0 + rows; k0 += kTile) {
          const int cols = Tn - k0 < kTile ? Tn - k0 : kTile;
          tm.team_barrier();
          load_key_tile<T>(tm, qkv, C, kvC, hd, b, h / G, k0, cols, K, V);
          tm.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, rows), [&](int r) {  // this thread's query row
            const int lo = masked ? q0 + r - doc_pos(b * Tn + q0 + r) : 0;
            const T *const qr = &Q(r, 0), *const gr = &dO(r, 0);
            T* const dq = &dQ(r, 0);
            for (int c = lo > k0 ? lo - k0 : 0; c < cols && k0 + c <= q0 + r; ++c) {
              const T *const kc = &K(c, 0);
              const T sc = dot(qr, kc, hd), dp = dot(gr, &V(c, 0), hd);
              const T p = math::vexp(sc * scale - LSE(r)), ds = p * (dp - D(r)) * scale;
              for (int d = 0; d < hd; ++d) dq[d] += ds * kc[d];
            }
          });
        }
        tm.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, rows * hd), [&](int e) {
          dqkv(b, q0 + e / hd, h * hd + e % hd) = dQ(e / hd, e % hd);
        });
      });
}

#define TAPESTRY_INSTANTIATE(T)                                                                        \
  template void attention_tiled_forward<T>(const ExecSpace&, View3<T>, View3<T>, In3<T>, int, int, In1<int>); \
  template void attention_tiled_backward<T>(const ExecSpace&, View3<T>, In3<T>, In3<T>, In3<T>, In3<T>, int, int, \
                                            In1<int>);
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
