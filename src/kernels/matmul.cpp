#include "tapestry/kernels/matmul.hpp"

#include <optional>
#include <stdexcept>
#include <type_traits>


namespace tapestry::kernels {

namespace {
void check_extent(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("tapestry::matmul: extent mismatch: ") + what);
}
}  // namespace

template <class T>
void matmul_forward(const Blas& blas, View2<T> out, In2<T> inp, In2<T> weight, In1<T> bias) {
  const int N = int(inp.extent(0)), C = int(inp.extent(1)), OC = int(weight.extent(0));
  check_extent(int(weight.extent(1)) == C, "weight columns != input channels");
  check_extent(int(out.extent(0)) == N && int(out.extent(1)) == OC, "out is not (N, OC)");
  check_extent(bias.extent(0) == 0 || int(bias.extent(0)) == OC, "bias is not (OC)");
  // out (N,OC) = inp (N,C) @ weight^T (C,OC) (+ bias in each row)
  if (bias.extent(0) > 0)
    blas.gemm_bias<T>(false, true, N, OC, C, inp.data(), C, weight.data(), C, bias.data(), out.data(), OC);
  else
    blas.gemm<T>(false, true, N, OC, C, T(1), inp.data(), C, weight.data(), C, T(0), out.data(), OC);
}

template <class T>
void matmul_backward(const Blas& blas, View2<T> dinp, View2<T> dweight, View1<T> dbias,
                     In2<T> dout, In2<T> inp, In2<T> weight) {
  const int N = int(inp.extent(0)), C = int(inp.extent(1)), OC = int(weight.extent(0));
  check_extent(int(dout.extent(0)) == N && int(dout.extent(1)) == OC, "dout is not (N, OC)");
  check_extent(int(dweight.extent(0)) == OC && int(dweight.extent(1)) == C, "dweight is not (OC, C)");
  // bf16 products: dout rounded once for both products
  [[maybe_unused]] std::optional<Blas::Held> held;
  if constexpr (std::is_same_v<T, float>) held.emplace(blas.hold(dout.data(), dout.span()));
  if (dinp.extent(0) > 0) {
    check_extent(int(dinp.extent(0)) == N && int(dinp.extent(1)) == C, "dinp is not (N, C)");
    // dinp (N,C) = dout (N,OC) @ weight (OC,C)
    blas.gemm<T>(false, false, N, C, OC, T(1), dout.data(), OC, weight.data(), C, T(0), dinp.data(), C);
  }
  // dweight (OC,C) += dout^T (OC,N) @ inp (N,C)
  blas.gemm<T>(true, false, OC, C, N, T(1), dout.data(), OC, inp.data(), C, T(1), dweight.data(), C);
  if (dbias.extent(0) > 0) {
    check_extent(int(dbias.extent(0)) == OC, "dbias is not (OC)");
    // dbias (OC) += dout^T (OC,N) @ ones (N)
    blas.gemv_t<T>(N, OC, T(1), dout.data(), OC, blas.ones<T>(N), T(1), dbias.data());
  }
}

template void matmul_forward<float>(const Blas&, View2<float>, In2<float>, In2<float>, In1<float>);
template void matmul_forward<double>(const Blas&, View2<double>, In2<double>, In2<double>, In1<double>);
template void matmul_backward<float>(const Blas&, View2<float>, View2<float>, View1<float>,
                                     In2<float>, In2<float>, In2<float>);
template void matmul_backward<double>(const Blas&, View2<double>, View2<double>, View1<double>,
                                      In2<double>, In2<double>, In2<double>);

}  // namespace tapestry::kernels
