"""Train-step throughput and MFU of a student, with and without KD from a teacher.

  python -m benchmarks.train --json_out=reports/train_gpu.json     # student_400m (+ teacher_1_6b KD), bf16
  python -m benchmarks.train --smoke                               # CPU, seconds

Uses guide_jax.trainer.make_train_step (one jitted step: forward [+ frozen teacher forward] -> loss
-> grads -> optax update), random params from trainer.init_random, optim.make_optimizer, and a fixed
synthetic batch of uniform random tokens (the step's cost does not depend on the token values).

FLOPs (model FLOPs, ModelConfig; recomputation under remat is not counted):
  student train per token  = config.train_flops_per_token(T) = 3 * forward
                           = 6 * N_matmul + 12 * n * h * l * T
  teacher forward per token = 2 * N_matmul_T + 4 * n_T * h_T * l_T * T
  N_matmul = n * (4 d h l + 3 d f) + d V   (attention q/k/v/out, gated MLP, output layer)
  KD step per token        = student train + teacher forward
MFU = tokens/s * FLOPs per token / peak FLOP/s. Peak: --peak_tflops, else the datasheet dense peak
for the device kind and matmul dtype (H100 SXM bf16 989 TFLOP/s, f32 via TF32 494.7), else (CPU,
unknown devices) the best of a big jitted [n, n] @ [n, n] matmul measured in this same run.
KD cost: measured step-time ratio t_KD / t_student vs the FLOP-predicted ratio
(student train + teacher forward) / (student train).
"""
import argparse
import math
import os
import statistics
import sys
import time

if __package__ in (None, ""):  # `python benchmarks/train.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from guide_jax import optim, sharding, trainer  # noqa: E402

FLOP_FORMULAS = {
    "student_train_per_token": "6*N_matmul + 12*n*h*l*T  (= 3 x forward; ModelConfig.train_flops_per_token)",
    "teacher_forward_per_token": "2*N_matmul_T + 4*n_T*h_T*l_T*T  (ModelConfig.forward_flops_per_token)",
    "N_matmul": "n*(4*d*h*l + 3*d*f) + d*V",
    "kd_step_per_token": "student_train + teacher_forward",
    "mfu": "tokens_per_s * flops_per_token / peak_flops_per_s",
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--student", default=None,
                 help="gin/models name, 'name:key=v,...' or 'key=v,...' (default student_400m; smoke tiny_student)")
  p.add_argument("--teacher", default=None, help="KD teacher, same syntax (default teacher_1_6b; smoke tiny_teacher)")
  p.add_argument("--vocab_size", type=int, default=None, help="default: the VOCAB_SIZE the gin file names")
  p.add_argument("--batch", type=int, default=None, help="global batch (default 16 accelerator, 8 CPU)")
  p.add_argument("--seq", type=int, default=None, help="sequence length (default 2048 accelerator, 256 CPU)")
  p.add_argument("--steps", type=int, default=None, help="timed steps (default 10, CPU 5)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first compiles)")
  p.add_argument("--dtype", default=None, choices=("bfloat16", "float32"),
                 help="activation dtype of student and teacher (default: the gin files')")
  p.add_argument("--remat", default=None, choices=("none", "full", "dots"), help="student remat (default: gin's)")
  p.add_argument("--attention_impl", default="xla", choices=("xla", "cudnn"))
  p.add_argument("--kd", default="both", choices=("both", "off", "on"), help="which steps to time")
  p.add_argument("--alpha", type=float, default=0.5, help="KD weight for the KD step")
  p.add_argument("--tau", type=float, default=1.0)
  p.add_argument("--optimizer", default="adamw", choices=optim.OPTIMIZERS)
  p.add_argument("--model_parallel", type=int, default=1)
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="per-device peak TFLOP/s (default: datasheet by device kind; CPU: measured)")
  p.add_argument("--peak_matmul_n", type=int, default=None, help="size of the peak-measuring matmul (CPU)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--smoke", action="store_true", help="tiny shapes, 2 steps (CPU test)")
  p.add_argument("--json_out", default=None, help="write all figures here (atomically)")
  args = p.parse_args(argv)
  accel = common.is_accelerator()
  if args.smoke:
    args.student = args.student or "tiny_student"
    args.teacher = args.teacher or "tiny_teacher"
    args.batch = args.batch or 2
    args.seq = args.seq or 32
    args.steps = args.steps or 2
    args.warmup = min(args.warmup, 1)
    args.peak_matmul_n = args.peak_matmul_n or 512
  args.student = args.student or "student_400m"
  args.teacher = args.teacher or "teacher_1_6b"
  args.batch = args.batch or (16 if accel else 8)
  args.seq = args.seq or (2048 if accel else 256)
  args.steps = args.steps or (10 if accel else 5)
  args.peak_matmul_n = args.peak_matmul_n or (8192 if accel else 4096)
  if not 0.0 < args.alpha <= 1.0:
    p.error("--alpha must be in (0, 1] (the KD step needs a teacher forward)")
  return args


def synthetic_batch(batch: int, seq: int, vocab: int, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, size=(batch, seq + 1), dtype=np.int32)
  return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
          "decoder_loss_weights": np.ones((batch, seq), np.float32),
          "decoder_segment_ids": np.ones((batch, seq), np.int32),
          "decoder_positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy()}


def time_steps(student_cfg, teacher_cfg, alpha, args, mesh, batch, flops_per_token, peak_flops):
  """Warm up (compile) and time a train step; returns the figures for one variant."""
  optimizer = optim.make_optimizer(1000, name=args.optimizer)
  key = jax.random.PRNGKey(args.seed)
  state = trainer.abstract_state(student_cfg, optimizer, mesh)
  params = trainer.init_random(state, student_cfg, key)
  opt_state = trainer.init_opt_state(state, optimizer, params)
  teacher_params = None
  if alpha > 0:
    teacher_state = trainer.abstract_state(teacher_cfg, optimizer, mesh)
    teacher_params = trainer.init_random(teacher_state, teacher_cfg, jax.random.fold_in(key, 1))
  step = trainer.make_train_step(student_cfg, optimizer, mesh, state,
                                 teacher_config=teacher_cfg if alpha > 0 else None, alpha=alpha, tau=args.tau)
  warm_times = []
  for _ in range(max(args.warmup, 1)):
    t = time.perf_counter()
    params, opt_state, metrics = step(params, opt_state, batch, teacher_params)
    jax.block_until_ready((params, metrics))
    warm_times.append(time.perf_counter() - t)
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    params, opt_state, metrics = step(params, opt_state, batch, teacher_params)
    jax.block_until_ready((params, metrics))
    times.append(time.perf_counter() - t)
  loss = float(metrics["loss"])
  tokens = args.batch * args.seq
  med = statistics.median(times)
  rec = {"alpha": alpha, "first_step_s": warm_times[0], "step_s": med, "step_s_min": min(times),
         "step_s_mean": sum(times) / len(times), "step_times": times, "tokens_per_step": tokens,
         "tokens_per_s": tokens / med, "flops_per_token": flops_per_token,
         "model_tflops_per_s": tokens * flops_per_token / med / 1e12,
         "mfu": tokens * flops_per_token / med / peak_flops, "loss": loss, "loss_finite": math.isfinite(loss)}
  peak = common.device_peak_bytes() if common.is_accelerator() else None
  if peak is not None:
    rec["device_peak_bytes_in_use"] = peak
  del params, opt_state, teacher_params, metrics
  return rec


def main(argv=None):
  args = parse_args(argv)
  info = common.device_info()
  label = common.device_label(info)
  accel = common.is_accelerator()
  command = common.command_line("benchmarks.train", argv)
  mesh = sharding.make_mesh(args.model_parallel)
  if args.batch % mesh.shape["data"]:
    raise ValueError(f"--batch {args.batch} must divide by the mesh's data axis {mesh.shape['data']}")
  overrides = {"dtype": args.dtype, "attention_impl": args.attention_impl}
  student_cfg = common.model_config(args.student, args.vocab_size, remat=args.remat, **overrides)
  teacher_cfg = common.model_config(args.teacher, args.vocab_size or student_cfg.vocab_size, **overrides)
  if teacher_cfg.vocab_size != student_cfg.vocab_size:
    raise ValueError(f"teacher vocab {teacher_cfg.vocab_size} != student vocab {student_cfg.vocab_size}")
  print(f"device: {label}; jax {jax.__version__}; mesh {dict(mesh.shape)}; load average {common.load_average()}")
  print(f"student {args.student}: {common.describe(student_cfg)}")
  if args.kd != "off":
    print(f"teacher {args.teacher}: {common.describe(teacher_cfg)}")
  print(f"batch {args.batch} x seq {args.seq} = {args.batch * args.seq} tokens/step; attention_impl "
        f"{args.attention_impl}; optimizer {args.optimizer}; {args.steps} timed steps after {args.warmup} warmup")

  # Peak FLOP/s of the whole mesh.
  dtype = student_cfg.dtype
  if args.peak_tflops:
    per_device, source = args.peak_tflops, "--peak_tflops flag"
    peak_tflops = per_device * info["num_devices"]
  elif accel and common.datasheet_peak_tflops(info["device_kind"], dtype):
    per_device = common.datasheet_peak_tflops(info["device_kind"], dtype)
    source = f"datasheet dense {dtype} peak for {info['device_kind']}"
    peak_tflops = per_device * info["num_devices"]
  else:
    per_device = common.measure_matmul_tflops(args.peak_matmul_n, dtype)
    source = (f"measured in this run: best of 3 jitted {args.peak_matmul_n}x{args.peak_matmul_n} {dtype} "
              f"matmuls on device 0")
    # On CPU one XLA device already uses every core, so the mesh's peak is the single measurement.
    peak_tflops = per_device if info["platform"] == "cpu" else per_device * info["num_devices"]
  print(f"peak {peak_tflops:.4g} TFLOP/s ({source})")
  print("FLOPs: " + "; ".join(f"{k} = {v}" for k, v in FLOP_FORMULAS.items()))

  s_fpt = student_cfg.train_flops_per_token(args.seq)
  t_fpt = teacher_cfg.forward_flops_per_token(args.seq)
  print(f"student train {s_fpt / 1e9:.4g} GFLOP/token; teacher forward {t_fpt / 1e9:.4g} GFLOP/token")
  batch = trainer.global_batch(synthetic_batch(args.batch, args.seq, student_cfg.vocab_size, args.seed), mesh)
  out = {"benchmark": "train", "command": command, "device": label, "device_info": info,
         "load_average_start": common.load_average(), "student_name": args.student,
         "teacher_name": args.teacher, "student": student_cfg.__dict__.copy(), "teacher": teacher_cfg.__dict__.copy(),
         "batch": args.batch, "seq": args.seq, "dtype": dtype, "remat": student_cfg.remat,
         "attention_impl": args.attention_impl, "optimizer": args.optimizer, "flop_formulas": FLOP_FORMULAS,
         "student_train_flops_per_token": s_fpt, "teacher_forward_flops_per_token": t_fpt,
         "peak_tflops": peak_tflops, "peak_tflops_per_device": per_device, "peak_source": source,
         "results": {}}
  flops_peak = peak_tflops * 1e12
  variants = [("student", 0.0, s_fpt)] if args.kd in ("both", "off") else []
  if args.kd in ("both", "on"):
    variants.append(("kd", args.alpha, s_fpt + t_fpt))
  for name, alpha, fpt in variants:
    rec = time_steps(student_cfg, teacher_cfg, alpha, args, mesh, batch, fpt, flops_peak)
    out["results"][name] = rec
    print(f"{name:8s} step {rec['step_s']:.4f} s (median; min {rec['step_s_min']:.4f}, first {rec['first_step_s']:.2f} "
          f"incl. compile)  {rec['tokens_per_s']:,.0f} tokens/s  {rec['model_tflops_per_s']:.4g} model TFLOP/s  "
          f"MFU {100 * rec['mfu']:.2f}%  loss {rec['loss']:.3f}", flush=True)

  res = out["results"]
  out["mfu"] = res["student"]["mfu"] if "student" in res else None
  out["mfu_kd"] = res["kd"]["mfu"] if "kd" in res else None
  out["tokens_per_s"] = res["student"]["tokens_per_s"] if "student" in res else None
  out["kd_flops_ratio_predicted"] = (s_fpt + t_fpt) / s_fpt
  if "student" in res and "kd" in res:
    measured = res["kd"]["step_s"] / res["student"]["step_s"]
    out["kd_cost_ratio"] = measured
    out["kd_cost_ratio_min"] = res["kd"]["step_s_min"] / res["student"]["step_s_min"]
    out["kd_cost_vs_predicted"] = measured / out["kd_flops_ratio_predicted"]
    print(f"KD cost: measured step-time ratio t_KD/t_student = {measured:.3f}x (min-based "
          f"{out['kd_cost_ratio_min']:.3f}x) vs FLOP-predicted (S_train + T_fwd)/S_train = "
          f"{out['kd_flops_ratio_predicted']:.3f}x -> measured/predicted = {out['kd_cost_vs_predicted']:.3f}")
  else:
    out["kd_cost_ratio"] = out["kd_cost_vs_predicted"] = None
  if out["mfu"] is not None:
    print(f"MFU (student step) = {out['tokens_per_s']:,.0f} tokens/s x {s_fpt / 1e9:.4g} GFLOP/token / "
          f"{peak_tflops:.4g} TFLOP/s = {100 * out['mfu']:.2f}%")
  out["load_average_end"] = common.load_average()
  if args.json_out:
    common.write_json_atomic(args.json_out, out)
    print(f"wrote {args.json_out}")
  return out


if __name__ == "__main__":
  main()
