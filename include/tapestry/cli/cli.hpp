#pragma once
/// \file
/// \brief Command line (CLI11) -> configs. Fills structs; runs nothing.

#include "tapestry/core/config.hpp"
#include "tapestry/io/data_prepare.hpp"
#include "tapestry/io/tokenizer.hpp"

namespace tapestry::cli {

enum class Command { exit, train, data_prepare, data_train_tokenizer, bench_step, bench_gemm, bench_allreduce, bench_ckpt, ckpt_info, ckpt_verify, ckpt_export, ckpt_eval, plan };

/// \brief What the command line asked for.
struct Invocation {
  Command command = Command::exit;
  int exit_code = 0;  ///< for Command::exit (after --help, --version or a parse error)
  TrainConfig train;
  io::PrepareConfig prepare;
  io::TokenizerTrainConfig train_tokenizer;
  BenchStepConfig bench_step;
  BenchGemmConfig bench_gemm;
  BenchAllreduceConfig bench_allreduce;
  BenchCkptConfig bench_ckpt;
  PlanConfig plan;
  std::string ckpt_path, ckpt_output;  ///< `tapestry ckpt ...`
  std::string eval_data, eval_logits;  ///< `tapestry ckpt eval`
  std::string export_format = "llmc", export_dtype = "fp32";  ///< `tapestry ckpt export`
  std::string max_shard_size = "5GB";
  std::string export_tokenizer;  ///< `ckpt export --format hf --tokenizer`
  int eval_seq_len = 64, eval_rows = 4;
};

/// Parses argv. --help and --version print to stdout; a parse error prints one line
/// "tapestry: error: ..." to stderr. Both return Command::exit with the code to exit with.
/// `quiet` suppresses all printing (every rank but 0).
Invocation parse(int argc, const char* const* argv, bool quiet = false);

}  // namespace tapestry::cli
