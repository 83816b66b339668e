#include "tapestry/train/trainer.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <memory>

#include "tapestry/core/error.hpp"
#include "tapestry/io/data_loader.hpp"
#include "tapestry/io/llmc_checkpoint.hpp"
#include "tapestry/kernels/blas.hpp"
#include "tapestry/kernels/optim.hpp"
#include "tapestry/model/gpt.hpp"
#include "tapestry/optim/adamw.hpp"

namespace tapestry::train {

namespace {

using Clock = std::chrono::steady_clock;

double evaluate(model::GPT& gpt, const kernels::Blas& blas, io::DataLoader& loader, int batches) {
  loader.reset();
  std::vector<int> in, tg;
  double sum = 0;
  for (int i = 0; i < batches; ++i) {
    loader.next_batch(in, tg);
    sum += gpt.forward(blas, in, tg);
  }
  return sum / batches;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

}  // namespace

TrainResult run_training(const TrainConfig& cfg_in, std::ostream& out) {
  TrainConfig cfg = cfg_in;
  if (!cfg.init_from.empty()) {
    const ModelConfig m = io::read_llmc_header(cfg.init_from);
    if (cfg.model.vocab_size != m.vocab_size || cfg.model.n_layer != m.n_layer ||
        cfg.model.d_model != m.d_model || cfg.model.n_head != m.n_head)
      out << "note: model shape taken from " << cfg.init_from << "\n";
    cfg.model = m;
  }
  validate(cfg);
  const int B = cfg.batch_size, T = cfg.seq_len;

  io::DataLoader train_loader({cfg.train_data}, B, T, cfg.model.vocab_size);
  std::unique_ptr<io::DataLoader> val_loader;
  if (cfg.val_every > 0) val_loader = std::make_unique<io::DataLoader>(std::vector<std::string>{cfg.val_data}, B, T, cfg.model.vocab_size);

  kernels::Blas blas;
  model::GPT gpt(cfg.model, B, T);
  if (cfg.init_from.empty()) gpt.init_random(cfg.seed);
  else gpt.load_params(io::read_llmc_params(cfg.init_from, std::size_t(cfg.model.num_parameters())));
  optim::AdamW adamw(cfg.optim, gpt.tensors(), gpt.params().extent(0));

  const double tokens_per_step = double(B) * T * cfg.grad_accum;
  const double flops_per_step = cfg.model.flops_per_token(T) * tokens_per_step;
  out << "tapestry train: " << cfg.model.num_parameters() << " parameters (L=" << cfg.model.n_layer
      << " H=" << cfg.model.n_head << " C=" << cfg.model.d_model << " V=" << cfg.model.vocab_size
      << "), B=" << B << " T=" << T << " grad_accum=" << cfg.grad_accum << ", "
      << train_loader.num_tokens() << " training tokens, " << cfg.steps << " steps\n";

  std::ofstream metrics;
  if (!cfg.metrics_file.empty()) {
    metrics.open(cfg.metrics_file, std::ios::trunc);
    require(bool(metrics), "cannot write metrics file '" + cfg.metrics_file + "'");
  }

  TrainResult result;
  std::vector<int> in, tg;
  for (int step = 0; step <= cfg.steps; ++step) {
    if (val_loader && (step % cfg.val_every == 0 || step == cfg.steps)) {
      const ValRecord v{step, evaluate(gpt, blas, *val_loader, cfg.val_batches)};
      out << "step " << std::setw(5) << step << "/" << cfg.steps << " | val loss " << fmt("%.4f", v.loss) << "\n";
      if (metrics) metrics << "{\"step\":" << v.step << ",\"val_loss\":" << v.loss << "}\n";
      result.val.push_back(v);
    }
    if (step == cfg.steps) break;
    StepRecord r;
    const auto t0 = Clock::now();
    gpt.zero_grad();
    double loss = 0;
    for (int micro = 0; micro < cfg.grad_accum; ++micro) {
      train_loader.next_batch(in, tg);
      loss += gpt.forward(blas, in, tg) / cfg.grad_accum;
      gpt.backward(blas, 1.0 / cfg.grad_accum);
    }
    require(std::isfinite(loss), "loss is not finite at step " + std::to_string(step + 1) +
                                     " (lower --lr or enable --grad-clip)");
    r.grad_norm = optim::grad_norm(blas.exec(), gpt.grads());
    r.lr = optim::lr_at(cfg.optim, step, cfg.steps);
    adamw.step(blas.exec(), gpt.params(), gpt.grads(), r.lr, kernels::clip_factor(r.grad_norm, cfg.optim.grad_clip));
    blas.exec().fence();
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    r.step = step + 1;
    r.loss = loss;
    r.ms = dt * 1e3;
    r.tokens_per_s = tokens_per_step / dt;
    r.mfu = flops_per_step / dt / cfg.peak_flops;
    if (r.step % cfg.log_every == 0 || r.step == cfg.steps) {
      out << "step " << std::setw(5) << r.step << "/" << cfg.steps << " | loss " << fmt("%.4f", r.loss)
          << " | lr " << fmt("%.2e", r.lr) << " | norm " << fmt("%.3f", r.grad_norm) << " | "
          << fmt("%.1f", r.ms) << " ms | " << fmt("%.0f", r.tokens_per_s) << " tok/s | MFU "
          << fmt("%.1f", 100 * r.mfu) << "%\n";
      out.flush();
    }
    if (metrics) {
      metrics << "{\"step\":" << r.step << ",\"loss\":" << r.loss << ",\"lr\":" << r.lr
              << ",\"grad_norm\":" << r.grad_norm << ",\"ms\":" << r.ms
              << ",\"tokens_per_s\":" << r.tokens_per_s << ",\"mfu\":" << r.mfu << "}\n";
      metrics.flush();
    }
    result.steps.push_back(r);
  }
  if (!cfg.export_llmc.empty()) {
    io::write_llmc_checkpoint(cfg.export_llmc, cfg.model, gpt.params_to_host());
    out << "wrote llm.c checkpoint " << cfg.export_llmc << "\n";
  }
  return result;
}

}  // namespace tapestry::train
