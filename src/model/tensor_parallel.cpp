#include "tapestry/model/tensor_parallel.hpp"

namespace tapestry::model {

void copy_to_tp_region_backward(const TpGroup& tp, View2<float> dx) {
  if (tp.size() == 1) return;
  Kokkos::fence();  // the kernels that wrote dx may run on another execution-space instance
  tp.all_reduce_sum(dx.data(), dx.size());
}

void reduce_from_tp_region_forward(const TpGroup& tp, View2<float> y) {
  if (tp.size() == 1) return;
  Kokkos::fence();
  tp.all_reduce_sum(y.data(), y.size());
}

void SoloTp::reduce_scatter_sum(const float* send, float* recv, std::size_t n) const {
  if (send != recv) Kokkos::deep_copy(View1<float>(recv, n), View1<float>(const_cast<float*>(send), n));
}

void gather_from_sequence_region(const TpGroup& tp, View2<float> chunk, View2<float> full) {
  Kokkos::fence();
  const std::size_t n = chunk.size();
  if (full.data() + std::size_t(tp.rank()) * n != chunk.data())
    Kokkos::deep_copy(View1<float>(full.data() + std::size_t(tp.rank()) * n, n), View1<float>(chunk.data(), n));
  tp.all_gather_inplace(full.data(), n);
}

void reduce_scatter_to_sequence_region(const TpGroup& tp, View2<float> full, View2<float> chunk) {
  Kokkos::fence();
  tp.reduce_scatter_sum(full.data(), chunk.data(), chunk.size());
}

}  // namespace tapestry::model
