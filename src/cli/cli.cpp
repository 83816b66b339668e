#include "tapestry/cli/cli.hpp"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <iostream>

#include "tapestry/core/error.hpp"

#ifndef TAPESTRY_SOURCE_DIR
#define TAPESTRY_SOURCE_DIR "."
#endif
#ifndef TAPESTRY_VERSION
#define TAPESTRY_VERSION "unknown"
#endif

namespace tapestry::cli {

namespace {

void add_model_options(CLI::App* app, ModelConfig& m) {
  app->add_option("--n-layer", m.n_layer, "Transformer blocks")->capture_default_str()->group("Model");
  app->add_option("--n-head", m.n_head, "Attention heads (must divide d-model)")->capture_default_str()->group("Model");
  app->add_option("--d-model", m.d_model, "Hidden size C")->capture_default_str()->group("Model");
  app->add_option("--max-seq-len", m.max_seq_len, "Longest sequence (rows of a learned position embedding)")->capture_default_str()->group("Model");
  app->add_option("--vocab-size", m.vocab_size, "Vocabulary (256 for the byte tokenizer)")->capture_default_str()->group("Model");
  app->add_option("--padded-vocab-size", m.padded_vocab_size,
                  "Token-embedding rows; 0: vocab-size rounded up to 128")->capture_default_str()->group("Model");
  for_each_block_key(m, [&](const char* name, auto& field, const char* help) {
    std::string flag = std::string("--") + name;
    std::replace(flag.begin(), flag.end(), '_', '-');
    app->add_option(flag, field, help)->capture_default_str()->group("Model");
  });
  app->add_option("--doc-mask", m.doc_mask,
                  "Document masking: attention stays inside each document of a packed sequence and RoPE positions "
                  "restart at each (true/false; needs --eod-token)")
      ->capture_default_str()->group("Model");
  app->add_option("--eod-token", m.eod_token, "End-of-document token id (the EOS that data prepare appends); -1: none")
      ->capture_default_str()->group("Model");
  app->add_option("--eod-mask-loss", m.eod_mask_loss,
                  "The token after an end-of-document is not predicted: no loss, no gradient (true/false)")
      ->capture_default_str()->group("Model");
  app->add_option("--model", "Model preset: a name from inputs/models/ (gpt2-124m, llama3.2-1b, llama3-8b, llama3-70b, "
                  "apertus-8b, apertus-70b, tiny-llama) or a TOML file of model keys; the command line and -c override it")
      ->group("Model");
}

/// Where a preset name is looked up: ./inputs/models, then the source tree's inputs/models.
std::string preset_path(const std::string& name) {
  if (name.find('/') != std::string::npos || name.find(".toml") != std::string::npos) return name;
  for (const std::string& dir : {std::string("inputs/models"), std::string(TAPESTRY_SOURCE_DIR) + "/inputs/models"}) {
    const std::string p = dir + "/" + name + ".toml";
    if (FILE* f = std::fopen(p.c_str(), "r")) {
      std::fclose(f);
      return p;
    }
  }
  throw Error("unknown model preset '" + name + "' (not in ./inputs/models or " TAPESTRY_SOURCE_DIR
              "/inputs/models; give a name there or a .toml path)");
}

void add_train_options(CLI::App* t, TrainConfig& c) {
  add_model_options(t, c.model);
  auto& o = c.optim;
  t->add_option("--lr", o.lr, "Peak learning rate")->capture_default_str()->group("Optimizer");
  t->add_option("--min-lr-ratio", o.min_lr_ratio, "Cosine decays to lr * this")->capture_default_str()->group("Optimizer");
  t->add_option("--warmup-steps", o.warmup_steps, "Linear warmup steps")->capture_default_str()->group("Optimizer");
  t->add_option("--beta1", o.beta1, "AdamW beta1")->capture_default_str()->group("Optimizer");
  t->add_option("--beta2", o.beta2, "AdamW beta2")->capture_default_str()->group("Optimizer");
  t->add_option("--eps", o.eps, "AdamW epsilon")->capture_default_str()->group("Optimizer");
  t->add_option("--weight-decay", o.weight_decay, "Decoupled weight decay (2-D weights only)")->capture_default_str()->group("Optimizer");
  t->add_option("--grad-clip", o.grad_clip, "Clip the global gradient norm to this; 0 disables")->capture_default_str()->group("Optimizer");

  t->add_option("--batch-size,-b", c.batch_size, "Sequences per micro-batch (B)")->capture_default_str()->group("Training");
  t->add_option("--seq-len,-t", c.seq_len, "Tokens per sequence (T)")->capture_default_str()->group("Training");
  t->add_option("--grad-accum,--micro-batches", c.grad_accum,
                "Micro-batches per optimizer step (M); with --pp the 1F1B schedule pipelines them")
      ->capture_default_str()->group("Training");
  t->add_option("--steps", c.steps, "Optimizer steps")->capture_default_str()->group("Training");
  t->add_option("--seed", c.seed, "Seed of the parameter initialisation")->capture_default_str()->group("Training");
  t->add_option("--val-every", c.val_every, "Evaluate the validation loss every N steps; 0: never")->capture_default_str()->group("Training");
  t->add_option("--val-batches", c.val_batches, "Batches per validation")->capture_default_str()->group("Training");
  t->add_option("--log-every", c.log_every, "Print a progress line every N steps")->capture_default_str()->group("Training");
  t->add_option("--peak-flops", c.peak_flops, "Peak FLOP/s for MFU: of one GPU per rank, or of a node's CPU cores (shared by its ranks)")->capture_default_str()->group("Training");
  t->add_option("--attention", c.attention,
                "matrix (T x T probabilities in memory, BLAS), tiled (no T x T matrix; FlashAttention-2 style), "
                "or auto (matrix; tiled is for sequences whose T x T matrices do not fit)")
      ->capture_default_str()->group("Training");
  t->add_option("--precision", c.precision,
                "fp32, or bf16: matmuls, and the matrix attention's products, take bf16 inputs and accumulate "
                "in fp32 (tensor cores), the attention probabilities and the linear layers' inputs are kept "
                "for backward in bf16 (the copies the products read); weights, gradients, AdamW state and "
                "reductions stay fp32")
      ->capture_default_str()->group("Training");
  t->add_option("--activations", c.activations,
                "fp32, or bf16: the activations kept for backward (and the residual stream) are stored in "
                "bf16 (52% of fp32's activation memory for GPT-2 124M at 8 x 1024); "
                "the kernels still compute in fp32")
      ->capture_default_str()->group("Training");

  auto& p = c.parallel;
  t->add_option("--tp", p.tp, "Tensor-parallel ranks")->capture_default_str()->group("Parallelism");
  t->add_flag("--sequence-parallel", p.sequence_parallel,
              "With --tp: split LayerNorm and residual regions along the tokens (all-gather / reduce-scatter "
              "instead of all-reduce)")
      ->group("Parallelism");
  t->add_option("--pp", p.pp, "Pipeline stages (1F1B schedule over --micro-batches)")->capture_default_str()->group("Parallelism");
  t->add_option("--pp-split", p.pp_split, "Layers per pipeline stage, e.g. 3,3,2 (default: even)")->group("Parallelism");
  t->add_option("--dp", p.dp, "Data-parallel ranks; 0: world / (tp * pp)")->capture_default_str()->group("Parallelism");
  t->add_option("--zero", p.zero, "1: shard the AdamW state over data-parallel ranks (ZeRO-1)")->capture_default_str()->group("Parallelism");
  t->add_option("--bucket-mb", p.bucket_mb, "Gradient all-reduce bucket size, MiB")->capture_default_str()->group("Parallelism");
  t->add_flag("--overlap-grad-reduce", p.overlap_grad_reduce,
              "Sum each layer's gradients over the data-parallel ranks as soon as backward has finished them, "
              "while the lower layers' backward runs; with --zero 1 also bring each layer's parameters while the "
              "next forward runs (MPI: on a thread; NCCL: on its own stream). Pays where the sums cross a network; "
              "on one node whose cores all compute it gains nothing. Needs --grad-reduce flat")
      ->group("Parallelism");
  t->add_option("--collectives", p.collectives, "mpi, nccl or auto")->capture_default_str()->group("Parallelism");
  t->add_option("--grad-reduce", p.grad_reduce,
                "flat, or hierarchical: reduce inside the node, then the site, then across sites")
      ->capture_default_str()->group("Parallelism");
  t->add_option("--compress", p.compress,
                "Cross-site encoding (hierarchical gradients or DiLoCo's outer step), with error feedback: none, bf16, "
                "int8 (scale per 256), int4 (scale per 64), topk (8 largest of every 256, bf16)")
      ->capture_default_str()->group("Parallelism");
  t->add_option("--sites", p.sites, "Sites in this job: contiguous blocks of DP ranks (TAPESTRY_SITE overrides per rank)")
      ->capture_default_str()->group("Parallelism");
  t->add_option("--outer-steps", p.outer_steps,
                "DiLoCo: each site trains with its own AdamW for H steps, then the sites average their "
                "parameter change with an outer Nesterov SGD step; 0: off")
      ->capture_default_str()->group("Cross-site (DiLoCo)");
  t->add_option("--outer-lr", p.outer_lr, "DiLoCo outer learning rate")->capture_default_str()->group("Cross-site (DiLoCo)");
  t->add_option("--outer-momentum", p.outer_momentum, "DiLoCo outer momentum")->capture_default_str()->group("Cross-site (DiLoCo)");
  t->add_option("--outer-nesterov", p.outer_nesterov, "DiLoCo: Nesterov (true) or plain (false) outer momentum")
      ->capture_default_str()->group("Cross-site (DiLoCo)");
  t->add_option("--outer-fragments", p.outer_fragments,
                "Streaming DiLoCo: P fragments of each rank's parameters, fragment p synchronised every H steps at "
                "offset p*H/P (cross-site traffic spread over the round)")
      ->capture_default_str()->group("Cross-site (DiLoCo)");
  t->add_option("--outer-delay", p.outer_delay,
                "Streaming DiLoCo: a fragment's exchange overlaps this many inner steps, then is merged; 0: blocking")
      ->capture_default_str()->group("Cross-site (DiLoCo)");
  t->add_option("--outer-mix", p.outer_mix,
                "With --outer-delay: merged fragment = mix * local + (1 - mix) * new outer parameters")
      ->capture_default_str()->group("Cross-site (DiLoCo)");
  t->add_option("--outer-overlap", p.outer_overlap,
                "With --outer-delay: exchange on a background thread (false: at send time, result held)")
      ->capture_default_str()->group("Cross-site (DiLoCo)");
  t->add_option("--outer-quota", p.outer_quota,
                "Stragglers: a site slower than the fastest skips the inner steps it has no time for, and the "
                "outer step weights each site by the steps it computed")
      ->capture_default_str()->group("Cross-site (DiLoCo)");
  t->add_option("--emulate-slow-site", p.emulate_slow_site,
                "Benchmarks: make this site's ranks --emulate-slow-factor times slower (they sleep after each step)")
      ->capture_default_str()->group("Cross-site (DiLoCo)");
  t->add_option("--emulate-slow-factor", p.emulate_slow_factor, "See --emulate-slow-site")
      ->capture_default_str()->group("Cross-site (DiLoCo)");
  t->add_option("--federation", p.federation,
                "Join the federated run NAME: this job is one site (mpirun --ompi-server file:URI of the run's ompi-server)")
      ->group("Cross-site (federation)");
  t->add_option("--site-id", p.site_id, "This job's site in the federation (0 hosts the rendezvous); --sites: the number of jobs")
      ->capture_default_str()->group("Cross-site (federation)");
  t->add_option("--federation-timeout", p.federation_timeout,
                "Seconds for every site to join; then one error and exit 1 (elastic: also how long a site may "
                "take to answer before it is dropped)")
      ->capture_default_str()->group("Cross-site (federation)");
  t->add_option("--federation-peers", p.federation_peers,
                "Elastic federation: host:port of every site's first rank, in site order (no ompi-server). A site "
                "whose job dies is dropped and the others go on; restarted with --resume auto it rejoins at the next "
                "outer boundary with a peer's state. Needs --outer-steps")
      ->group("Cross-site (federation)");
  t->add_option("--global-batch", c.global_batch,
                "Sequences per optimizer step over all ranks; sets grad-accum = global / (batch-size * dp)")
      ->capture_default_str()->group("Training");

  t->add_option("--train-data", c.train_data,
                 "Training data: a token dataset (llm.c file, or Megatron .bin/.idx by prefix), or a weighted mixture "
                 "\"0.7 A 0.3 B\"")
      ->group("Files");
  t->add_option("--val-data", c.val_data, "Validation data (same forms; read in order)")->group("Files");
  t->add_option("--shuffle", c.shuffle,
                "Read seq-len+1 token samples in a seeded random order per epoch (--seed); a mixture reads samples "
                "in order without it (true/false)")
      ->capture_default_str()->group("Files");
  t->add_option("--init-from", c.init_from,
                "Start from weights: a Hugging Face model directory (config.json + safetensors; its config sets the "
                "model) or a .safetensors file (for this run's model), or an llm.c GPT-2 checkpoint (fp32, version 3)")
      ->group("Files");
  t->add_option("--export-llmc", c.export_llmc, "After training, write the parameters as an llm.c checkpoint")->group("Files");
  t->add_option("--ckpt-dir", c.ckpt_dir, "Directory of HDF5 checkpoints")->capture_default_str()->group("Checkpoints");
  t->add_option("--save-every", c.save_every, "Save every N steps and at the end; 0: only on SIGTERM/SIGUSR1/SIGUSR2")->capture_default_str()->group("Checkpoints");
  t->add_option("--keep", c.keep, "Keep the newest K checkpoints; 0: all")->capture_default_str()->group("Checkpoints");
  t->add_option("--async-save", c.async_save,
                "Write checkpoints in the background while training goes on; the step only waits for a copy of "
                "the state (true/false)")
      ->capture_default_str()->group("Checkpoints");
  t->add_option("--resume", c.resume, "auto (ckpt-dir/latest, if any) or a checkpoint file")->group("Checkpoints");
  t->add_option("--metrics-file", c.metrics_file, "Write one JSON line per step here")->group("Files");
}

/// Applies a TOML config file to the options of `app` that the command line left unset. Keys are
/// long flag names without dashes in front ("n-layer = 4"); an unknown key is an error.
void apply_config_file(CLI::App* app, const std::string& path) {
  std::vector<CLI::ConfigItem> items;
  try {
    items = CLI::ConfigTOML().from_file(path);
  } catch (const CLI::FileError&) {
    throw Error("cannot read config file '" + path + "'");
  }
  for (const auto& item : items) {
    if (item.name == "++" || item.name == "--") continue;  // section markers
    const std::string key = item.fullname();
    CLI::Option* op = item.parents.empty() ? app->get_option_no_throw("--" + item.name) : nullptr;
    require(op != nullptr && key != "config",
            "config file '" + path + "': unknown key '" + key + "' (see tapestry " + app->get_name() + " --help)");
    if (op->count() > 0) continue;  // the command line wins
    op->add_result(item.inputs);
    try {
      op->run_callback();
    } catch (const CLI::ParseError& e) {
      throw Error("config file '" + path + "': key '" + key + "': " + e.what());
    }
  }
}

/// Fills the model keys left unset: a --model preset first, then the --arch family's defaults.
void apply_model_layers(CLI::App* app, ModelConfig& m) {
  if (auto* preset = app->get_option_no_throw("--model"); preset != nullptr && preset->count() > 0)
    apply_config_file(app, preset_path(preset->as<std::string>()));
  for (const auto& [key, value] : arch_defaults(m.arch)) {
    CLI::Option* op = app->get_option("--" + key);
    if (op->count() > 0) continue;
    op->add_result(value);
    op->run_callback();
  }
}

}  // namespace

Invocation parse(int argc, const char* const* argv, bool quiet) {
  Invocation inv;
  CLI::App app{"Tapestry: train one GPT across several supercomputers (Kokkos + MPI + HDF5)", "tapestry"};
  app.set_version_flag("--version", std::string("tapestry ") + TAPESTRY_VERSION);
  app.require_subcommand(1);
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // a later flag wins

  auto* train = app.add_subcommand("train", "Train a decoder: GPT-2 or the Llama family (--arch, --model; docs/model-spec.md)");
  std::string config_file;
  train->add_option("--config,-c", config_file,
                    "TOML file of options (keys are the flag names: n-layer = 4); flags override it");
  add_train_options(train, inv.train);

  auto* data = app.add_subcommand("data", "Prepare token files");
  data->require_subcommand(1);
  auto& prc = inv.prepare;
  auto* prep = data->add_subcommand(
      "prepare", "Tokenize text files (plain text, or .jsonl with a text field) into <name>_train and <name>_val "
                 "datasets; under mpirun the ranks share the work");
  prep->add_option("inputs", prc.inputs, "Text or .jsonl files, in order; each file starts a document")->required();
  prep->add_option("--output-dir,-o", prc.output_dir, "Where to write")->capture_default_str();
  prep->add_option("--name", prc.name, "Prefix of the output files")->capture_default_str();
  prep->add_option("--val-fraction", prc.val_fraction, "Tail of the corpus (by bytes, whole documents) held out")
      ->capture_default_str();
  prep->add_option("--tokenizer", prc.tokenizer,
                   "byte; a Hugging Face tokenizer.json (or the model folder holding it); a SentencePiece .model")
      ->capture_default_str();
  prep->add_option("--format", prc.format,
                   "llmc (<name>_train.bin: llm.c's token file, uint16 or uint32 ids) or megatron (<name>_train.bin + "
                   ".idx: Megatron's indexed dataset, with document boundaries)")
      ->capture_default_str();
  prep->add_option("--doc-separator", prc.doc_separator,
                   "Plain text: the string between documents, with \\n escapes (\"\\n\\n\": blank lines); "
                   "default: each file is one document");
  prep->add_option("--text-key", prc.text_key, "The field of each JSON line that holds the text")->capture_default_str();
  prep->add_option("--add-bos", prc.add_bos, "Put the tokenizer's BOS before each document (where it has one)")
      ->capture_default_str();
  prep->add_option("--add-eos", prc.add_eos, "Put the tokenizer's EOS after each document (where it has one)")
      ->capture_default_str();
  prep->add_option("--threads", prc.threads, "Tokenizing threads per rank")->capture_default_str();

  auto& tt = inv.train_tokenizer;
  auto* ttok = data->add_subcommand("train-tokenizer",
                                    "Build a SentencePiece tokenizer (<prefix>.model, .vocab) from text files");
  ttok->add_option("inputs", tt.inputs, "Text files, one sentence or paragraph per line")->required();
  ttok->add_option("--output,-o", tt.output_prefix, "Prefix of the model files")->capture_default_str();
  ttok->add_option("--vocab-size", tt.vocab_size, "Vocabulary size")->capture_default_str();
  ttok->add_option("--model-type", tt.model_type, "unigram or bpe")->capture_default_str();
  ttok->add_option("--character-coverage", tt.character_coverage,
                   "Share of characters the vocabulary covers (1.0 for small alphabets)")
      ->capture_default_str();
  ttok->add_option("--byte-fallback", tt.byte_fallback, "Unknown characters become byte tokens, never <unk>")
      ->capture_default_str();
  ttok->add_option("--max-sentences", tt.max_sentences, "Sample this many lines (0: all)")->capture_default_str();

  auto* bench = app.add_subcommand("bench", "Benchmarks for qualifying a machine");
  bench->require_subcommand(1);
  auto* step = bench->add_subcommand("step", "Time forward + backward + AdamW for one model shape");
  auto& bs = inv.bench_step;
  bs.model.n_layer = 12, bs.model.n_head = 12, bs.model.d_model = 768, bs.model.vocab_size = 50257,
  bs.model.max_seq_len = 1024;
  add_model_options(step, bs.model);
  step->add_option("--batch-size,-b", bs.batch_size, "B")->capture_default_str();
  step->add_option("--seq-len,-t", bs.seq_len, "T")->capture_default_str();
  step->add_option("--warmup", bs.warmup, "Untimed steps first")->capture_default_str();
  step->add_option("--iters", bs.iters, "Timed steps")->capture_default_str();
  step->add_option("--peak-flops", bs.peak_flops, "Peak FLOP/s for MFU: of one GPU per rank, or of a node's CPU cores (shared by its ranks)")->capture_default_str();
  step->add_option("--json", bs.json, "Also write the result as JSON here");
  step->add_option("--tp", bs.tp, "Tensor-parallel ranks (the rest of the job is data parallel)")->capture_default_str();
  step->add_flag("--sequence-parallel", bs.sequence_parallel, "With --tp: sequence parallelism");
  step->add_option("--attention", bs.attention, "matrix, tiled or auto (matrix)")->capture_default_str();
  step->add_option("--precision", bs.precision, "fp32, or bf16 matmul inputs with fp32 accumulation")->capture_default_str();
  step->add_option("--activations", bs.activations, "fp32, or bf16 storage of the activations kept for backward")
      ->capture_default_str();
  step->add_flag("--kernel-times", bs.kernel_times, "List the time of every Kokkos kernel (each fenced: slows the step)");
  step->add_option("--bucket-mb", bs.bucket_mb, "Gradient all-reduce bucket size, MiB")->capture_default_str();
  step->add_flag("--overlap-grad-reduce", bs.overlap_grad_reduce,
                 "Start each layer's gradient all-reduce as soon as backward has finished it (as train's flag); "
                 "the all-reduce time printed is then the wait left after backward");
  auto* gemm = bench->add_subcommand("gemm", "Measure the BLAS sgemm rate (M = N = K = size)");
  gemm->add_option("--size", inv.bench_gemm.size, "Matrix size")->capture_default_str();
  gemm->add_option("--iters", inv.bench_gemm.iters, "Timed calls")->capture_default_str();
  gemm->add_option("--precision", inv.bench_gemm.precision, "fp32 (sgemm) or bf16 (bf16 inputs, fp32 accumulation)")
      ->capture_default_str();

  // Kokkos's own --kokkos-* arguments are Kokkos's business (the runtime passes them on).
  std::vector<std::string> args;
  for (int i = argc - 1; i >= 1; --i)
    if (std::string(argv[i]).rfind("--kokkos-", 0) != 0) args.emplace_back(argv[i]);
  auto* ar = bench->add_subcommand("allreduce", "nccl-tests style all-reduce sweep: Tapestry's reducer vs MPI_Allreduce");
  auto& ac = inv.bench_allreduce;
  ar->add_option("--min-bytes,-b", ac.min_bytes, "Smallest message, bytes")->capture_default_str();
  ar->add_option("--max-bytes,-e", ac.max_bytes, "Largest message, bytes")->capture_default_str();
  ar->add_option("--factor,-f", ac.factor, "Size multiplier between rows")->capture_default_str();
  ar->add_option("--warmup,-w", ac.warmup, "Untimed calls per size")->capture_default_str();
  ar->add_option("--iters,-n", ac.iters, "Timed calls per size")->capture_default_str();
  ar->add_option("--bucket-mb", ac.bucket_mb, "Bucket size of Tapestry's reducer, MiB")->capture_default_str();
  ar->add_option("--collectives", ac.collectives, "mpi, nccl or auto")->capture_default_str();
  ar->add_option("--algo", ac.algo, "Tapestry's reducer: flat or hierarchical")->capture_default_str();
  ar->add_option("--sites", ac.sites, "Sites (hierarchical): contiguous blocks of ranks, or TAPESTRY_SITE")->capture_default_str();
  ar->add_option("--compress", ac.compress, "Cross-site encoding (hierarchical): none, bf16, int8, int4, topk")->capture_default_str();
  ar->add_option("--output,-o", ac.output, "Write the results to FILE.json or FILE.csv");

  auto* bck = bench->add_subcommand("ckpt", "Checkpoint write/read seconds and GB/s (parameters + AdamW state)");
  auto& bc = inv.bench_ckpt;
  bc.model = bs.model;
  add_model_options(bck, bc.model);
  bck->add_option("--dir", bc.dir, "Directory for the test file (on the file system to qualify)")->capture_default_str();
  bck->add_option("--iters", bc.iters, "Repetitions")->capture_default_str();

  auto* pl = app.add_subcommand("plan", "Memory per rank of a model on a layout (computed; nothing is allocated)");
  auto& pc = inv.plan;
  pc.model = bs.model;
  add_model_options(pl, pc.model);
  pl->add_option("--tp", pc.tp, "Tensor-parallel ranks")->capture_default_str()->group("Layout");
  pl->add_option("--pp", pc.pp, "Pipeline stages")->capture_default_str()->group("Layout");
  pl->add_option("--pp-split", pc.pp_split, "Layers per stage, e.g. 3,3,2 (default: even)")->group("Layout");
  pl->add_option("--dp", pc.dp, "Data-parallel ranks")->capture_default_str()->group("Layout");
  pl->add_option("--zero", pc.zero, "1: AdamW state sharded over dp (ZeRO-1)")->capture_default_str()->group("Layout");
  pl->add_flag("--sequence-parallel", pc.sequence_parallel, "With --tp: sequence parallelism")->group("Layout");
  pl->add_option("--attention", pc.attention, "matrix (T x T in memory), tiled, or auto (matrix)")
      ->capture_default_str()->group("Layout");
  pl->add_option("--activations", pc.activations, "fp32, or bf16 storage of the activations kept for backward")
      ->capture_default_str()->group("Layout");
  pl->add_option("--batch-size,-b", pc.batch_size, "Sequences per micro-batch per rank")->capture_default_str()->group("Layout");
  pl->add_option("--seq-len,-t", pc.seq_len, "Tokens per sequence")->capture_default_str()->group("Layout");
  pl->add_option("--micro-batches", pc.micro_batches, "Micro-batches per optimizer step")->capture_default_str()->group("Layout");
  pl->add_option("--gpus-per-node", pc.gpus_per_node, "Ranks per node, for the per-node line")->capture_default_str()->group("Layout");
  pl->add_option("--precision", pc.precision, "fp32, or bf16 (adds the bf16 copy of the weights, 2 bytes each; the matrix attention's "
                "probabilities and the linear layers' inputs kept in bf16)")
      ->capture_default_str()->group("Layout");
  pl->add_option("--json", pc.json, "Also write the plan as JSON here");

  auto* ckpt = app.add_subcommand("ckpt", "Inspect, verify and convert HDF5 checkpoints");
  ckpt->require_subcommand(1);
  auto* info = ckpt->add_subcommand("info", "Config, step, layout, and every tensor with shape, size and norm");
  info->add_option("checkpoint", inv.ckpt_path, "A checkpoint file (.h5)")->required();
  auto* verify = ckpt->add_subcommand("verify", "Check completeness and every tensor's checksum");
  verify->add_option("checkpoint", inv.ckpt_path, "A checkpoint file (.h5)")->required();
  auto* exp = ckpt->add_subcommand("export", "Write the parameters as an llm.c checkpoint or a Hugging Face model directory");
  exp->add_option("checkpoint", inv.ckpt_path, "A checkpoint file (.h5)")->required();
  exp->add_option("--output,-o", inv.ckpt_output, "llm.c checkpoint file, or (--format hf) the directory to create")->required();
  exp->add_option("--format", inv.export_format,
                  "llmc (GPT-2, llm.c's fp32 file) or hf (config.json + safetensors: GPT2LMHeadModel, "
                  "LlamaForCausalLM or ApertusForCausalLM)")->capture_default_str();
  exp->add_option("--dtype", inv.export_dtype, "hf: fp32 or bf16 (rounded to nearest even)")->capture_default_str();
  exp->add_option("--tokenizer", inv.export_tokenizer,
                  "hf: the tokenizer to put beside the weights (tokenizer.json or its folder, or a SentencePiece "
                  ".model); its BOS/EOS ids go into config.json");
  exp->add_option("--max-shard-size", inv.max_shard_size,
                  "hf: largest safetensors file (bytes, or with KB/MB/GB: 1000-based, as Hugging Face); "
                  "above it, shards and model.safetensors.index.json")->capture_default_str();

  auto* ev = ckpt->add_subcommand("eval", "Loss of the checkpoint's model on the first rows of a token file (one rank)");
  ev->add_option("checkpoint", inv.ckpt_path, "A checkpoint file (.h5) or a Hugging Face model directory")->required();
  ev->add_option("--data", inv.eval_data, "Token file (llm.c format)")->required();
  ev->add_option("--seq-len,-t", inv.eval_seq_len, "Tokens per row (T)")->capture_default_str();
  ev->add_option("--rows", inv.eval_rows, "Rows: row r reads tokens [r*T, r*T + T] (inputs and shifted targets)")
      ->capture_default_str();
  ev->add_option("--logits-out", inv.eval_logits, "Also write the logits: raw float32, (rows*T, vocab_size)");

  try {
    app.parse(args);
  } catch (const CLI::Success& e) {
    if (!quiet) app.exit(e);
    inv.exit_code = 0;
    return inv;
  } catch (const CLI::ParseError& e) {
    if (!quiet) {
      if (e.get_exit_code() == 0) {
        app.exit(e);
      } else {
        std::cerr << "tapestry: error: " << e.what() << "\n";
      }
    }
    inv.exit_code = e.get_exit_code() == 0 ? 0 : 2;
    return inv;
  }
  try {
    if (train->parsed() && !config_file.empty()) apply_config_file(train, config_file);
    if (train->parsed()) apply_model_layers(train, inv.train.model);
    if (step->parsed()) apply_model_layers(step, inv.bench_step.model);
    if (bck->parsed()) apply_model_layers(bck, inv.bench_ckpt.model);
    if (pl->parsed()) apply_model_layers(pl, inv.plan.model);
  } catch (const std::exception& e) {
    if (!quiet) std::cerr << "tapestry: error: " << e.what() << "\n";
    inv.command = Command::exit;
    inv.exit_code = 2;
    return inv;
  }
  if (train->parsed()) inv.command = Command::train;
  else if (prep->parsed()) inv.command = Command::data_prepare;
  else if (ttok->parsed()) inv.command = Command::data_train_tokenizer;
  else if (step->parsed()) inv.command = Command::bench_step;
  else if (gemm->parsed()) inv.command = Command::bench_gemm;
  else if (ar->parsed()) inv.command = Command::bench_allreduce;
  else if (bck->parsed()) inv.command = Command::bench_ckpt;
  else if (info->parsed()) inv.command = Command::ckpt_info;
  else if (verify->parsed()) inv.command = Command::ckpt_verify;
  else if (exp->parsed()) inv.command = Command::ckpt_export;
  else if (ev->parsed()) inv.command = Command::ckpt_eval;
  else if (pl->parsed()) inv.command = Command::plan;
  return inv;
}

}  // namespace tapestry::cli
