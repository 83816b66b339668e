// tapestry: runtime guard -> parse -> run the chosen command.
#include <exception>
#include <iostream>

#include "tapestry/cli/cli.hpp"
#include "tapestry/core/error.hpp"
#include "tapestry/io/tokenizer.hpp"
#include "tapestry/parallel/runtime.hpp"
#include "tapestry/train/bench.hpp"
#include "tapestry/train/trainer.hpp"

namespace {

int run(const tapestry::cli::Invocation& inv, const tapestry::parallel::Runtime& rt) {
  using tapestry::cli::Command;
  std::ostream& out = std::cout;
  switch (inv.command) {
    case Command::exit:
      return inv.exit_code;
    case Command::train:
      tapestry::require(rt.size() == 1, "tapestry train runs on 1 rank until data parallelism lands "
                                        "(got " + std::to_string(rt.size()) + " ranks); use mpirun -np 1");
      tapestry::train::run_training(inv.train, out);
      return 0;
    case Command::data_prepare: {
      if (rt.rank() != 0) return 0;
      const auto r = tapestry::io::prepare_data(inv.prepare);
      out << "wrote " << r.train_path << " (" << r.train_tokens << " tokens)";
      if (!r.val_path.empty()) out << " and " << r.val_path << " (" << r.val_tokens << " tokens)";
      out << "\n";
      return 0;
    }
    case Command::bench_step:
      tapestry::train::bench_step(inv.bench_step, out);
      return 0;
    case Command::bench_gemm:
      tapestry::train::bench_gemm(inv.bench_gemm, out);
      return 0;
  }
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  tapestry::parallel::Runtime rt(argc, argv);
  const auto inv = tapestry::cli::parse(argc, argv, rt.rank() != 0);
  try {
    return run(inv, rt);
  } catch (const tapestry::Error& e) {
    if (rt.rank() == 0) std::cerr << "tapestry: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "tapestry: internal error on rank " << rt.rank() << ": " << e.what() << "\n";
    return 3;
  }
}
