// tapestry: runtime guard -> parse -> process grid -> run the chosen command.
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <iostream>
#include <memory>
#include <new>
#include <string>

#include "tapestry/cli/cli.hpp"
#include "tapestry/core/error.hpp"
#include "tapestry/io/data_prepare.hpp"
#include "tapestry/io/tokenizer.hpp"
#include "tapestry/parallel/comm.hpp"
#include "tapestry/parallel/federation.hpp"
#include "tapestry/parallel/runtime.hpp"
#include "tapestry/train/bench.hpp"
#include "tapestry/train/checkpointing.hpp"
#include "tapestry/train/hf.hpp"
#include "tapestry/train/trainer.hpp"

namespace {

/// Three significant figures, as a progress line shows them.
std::string fmt_num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), v >= 100 ? "%.0f" : v >= 10 ? "%.1f" : "%.2f", v);
  return buf;
}

int run(const tapestry::cli::Invocation& inv, const tapestry::parallel::Runtime& rt) {
  using tapestry::cli::Command;
  namespace par = tapestry::parallel;
  std::ostream& out = std::cout;
  const auto world = par::Comm::view(rt.world());
  switch (inv.command) {
    case Command::exit:
      return inv.exit_code;
    case Command::train: {
      const auto& p = inv.train.parallel;
      par::Comm federated;  // with --federation: every site's ranks, ordered by site
      const bool elastic = tapestry::elastic_federation(p);
      if (!p.federation.empty()) par::agree(world, [&] { tapestry::validate(p); });
      if (elastic) {  // the sites meet over TCP in training
        if (world.rank() == 0)
          out << "federation '" << p.federation << "': site " << p.site_id << " of " << p.sites
              << ", elastic (this job's " << world.size() << " rank(s); the sites' first ranks connect over TCP: "
              << p.federation_peers << ")" << std::endl;
      } else if (!p.federation.empty()) {
        federated = par::federate(world, {p.federation, p.site_id, p.sites, p.federation_timeout},
                                  tapestry::federation_fingerprint(inv.train));
        if (world.rank() == 0)  // in every site's job log
          out << "federation '" << p.federation << "': joined as site " << p.site_id << " of " << p.sites << " ("
              << world.size() << " of " << federated.size() << " ranks)" << std::endl;
      }
      const par::Comm& all = p.federation.empty() || elastic ? world : federated;
      std::unique_ptr<par::ProcessGrid> grid;
      par::agree(all, [&] {
        grid = std::make_unique<par::ProcessGrid>(all.get(), par::Layout::make(all.size(), p.tp, p.pp, p.dp));
      });
      tapestry::train::run_training(inv.train, *grid, out);
      return 0;
    }
    case Command::data_prepare: {
      // Every rank tokenizes its share of the input into part files; rank 0 joins them in order.
      const auto& pc = inv.prepare;
      tapestry::io::PrepareResult part;
      const bool tty = isatty(2) != 0;
      par::agree(world, [&] { part = tapestry::io::prepare_part(pc, world.rank(), world.size(), tty && world.rank() == 0); });
      std::uint64_t mine[4] = {part.bytes, part.tokens, part.documents, part.empty_documents}, sum[4] = {0, 0, 0, 0};
      MPI_Reduce(mine, sum, 4, MPI_UINT64_T, MPI_SUM, 0, world.get());
      double secs = 0;
      MPI_Reduce(&part.seconds, &secs, 1, MPI_DOUBLE, MPI_MAX, 0, world.get());
      if (world.rank() != 0) return 0;
      const auto r = tapestry::io::prepare_join(pc, world.size(), part);
      out << "tokenizer: " << part.tokenizer << " (loaded in " << fmt_num(part.load_seconds) << " s)\n";
      out << "tokenized " << fmt_num(double(sum[0]) / 1e6) << " MB, " << sum[2] << " documents";
      if (sum[3] > 0) out << " (" << sum[3] << " empty ones skipped)";
      out << " in " << fmt_num(secs) << " s: " << fmt_num(double(sum[0]) / 1e6 / secs) << " MB/s, "
          << fmt_num(double(sum[1]) / secs) << " tokens/s (" << world.size() << (world.size() == 1 ? " rank" : " ranks")
          << " x " << pc.threads << (pc.threads == 1 ? " thread)" : " threads)") << "\n";
      if (r.eos >= 0) out << "each document ends with EOS id " << r.eos << " (train with --eod-token " << r.eos << ")\n";
      out << "wrote " << r.train_path << " (" << r.train_tokens << " tokens)";
      if (!r.val_path.empty()) out << " and " << r.val_path << " (" << r.val_tokens << " tokens)";
      out << "\n";
      return 0;
    }
    case Command::data_train_tokenizer: {
      if (rt.rank() != 0) return 0;
      tapestry::io::train_tokenizer(inv.train_tokenizer);
      const auto tok = tapestry::io::load_tokenizer(inv.train_tokenizer.output_prefix + ".model");
      out << "wrote " << inv.train_tokenizer.output_prefix << ".model: " << tok->describe() << "\n";
      return 0;
    }
    case Command::bench_step:
      par::agree(world, [&] { tapestry::validate(inv.bench_step); });
      tapestry::train::bench_step(inv.bench_step, world, out);
      return 0;
    case Command::bench_allreduce:
      par::agree(world, [&] { tapestry::validate(inv.bench_allreduce); });
      tapestry::train::bench_allreduce(inv.bench_allreduce, world, out);
      return 0;
    case Command::bench_ckpt:
      par::agree(world, [&] { tapestry::validate(inv.bench_ckpt.model); });
      tapestry::train::bench_ckpt(inv.bench_ckpt, world, out);
      return 0;
    case Command::ckpt_info:
    case Command::ckpt_verify:
    case Command::ckpt_export:
      if (rt.rank() != 0) return 0;  // serial tools
      if (inv.command == Command::ckpt_info) tapestry::train::ckpt_info(inv.ckpt_path, out);
      else if (inv.command == Command::ckpt_verify) tapestry::train::ckpt_verify(inv.ckpt_path, out);
      else if (inv.export_format == "hf")
        tapestry::train::ckpt_export_hf(inv.ckpt_path, inv.ckpt_output, inv.export_dtype,
                                        tapestry::parse_bytes(inv.max_shard_size), out, inv.export_tokenizer);
      else if (inv.export_format == "llmc")
        tapestry::train::ckpt_export_llmc(inv.ckpt_path, inv.ckpt_output, out);
      else
        throw tapestry::Error("ckpt export: --format must be llmc or hf (got '" + inv.export_format + "')");
      return 0;
    case Command::plan:
      if (rt.rank() != 0) return 0;
      tapestry::train::plan(inv.plan, out);
      return 0;
    case Command::ckpt_eval:
      if (rt.rank() != 0) return 0;
      tapestry::train::ckpt_eval(inv.ckpt_path, {inv.eval_data, inv.eval_seq_len, inv.eval_rows, inv.eval_logits}, out);
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
  using tapestry::cli::Command;
  const bool computes = inv.command == Command::train || inv.command == Command::bench_step ||
                        inv.command == Command::bench_allreduce || inv.command == Command::bench_gemm ||
                        inv.command == Command::bench_ckpt;
  if (computes && rt.rank() == 0) std::cout << rt.backend() << "\n";
  if (computes && !rt.devices().empty()) std::cout << rt.devices() << std::flush;  // CUDA: each rank's GPU
  try {
    return run(inv, rt);
  } catch (const tapestry::parallel::PeerError&) {
    return 1;  // another rank printed the error
  } catch (const tapestry::LibraryError& e) {
    std::cerr << "tapestry: error: rank " << rt.rank() << ": " << e.what() << "\n";
    if (rt.size() > 1) MPI_Abort(rt.world(), 2);
    return 2;
  } catch (const tapestry::Error& e) {
    // Errors are thrown on exactly one rank (see parallel::agree) or are printed by rank 0 only.
    std::cerr << "tapestry: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    // Out of memory (a model or batch larger than the node: Kokkos' allocation failure is a
    // std::bad_alloc) is the user's to fix; anything else is a bug. One line either way; a job of
    // several ranks is stopped (the others may be waiting in a collective).
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    const bool oom = dynamic_cast<const std::bad_alloc*>(&e) != nullptr || what.find("failed to allocate") != std::string::npos;
    if (oom) std::cerr << "tapestry: error: out of memory on rank " << rt.rank() << " (see `tapestry plan`): " << what << "\n";
    else std::cerr << "tapestry: internal error on rank " << rt.rank() << ": " << what << "\n";
    if (rt.size() > 1) MPI_Abort(rt.world(), 3);
    return 3;
  }
}
