"""Peak host memory of importing a bf16 Hugging Face teacher, per checkpoint byte.

  python benchmarks/hf_import_memory.py --layers 16 --out reports/hf_import_memory.json

Writes a random bf16 Llama-layout checkpoint (GQA, several safetensors shards + index), then, each
in a fresh process (so ru_maxrss is that method's own peak):
  import   guide_jax.importers.load(path, mesh=<all local CPU devices>): the teacher placed on its
           shardings, bf16 kept, with the one finiteness pass;
  peer     safetensors.numpy.load_file of every shard, all held at once (the least any host
           reader of the whole checkpoint holds).
Prints and writes: checkpoint bytes, the process's RSS before loading (python + jax), its peak,
and (peak - before) / checkpoint bytes for both, with the ratio import / peer. On a CPU backend
the placed teacher itself lives in host memory, so 1.0 is the floor.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_bytes() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("no VmRSS in /proc/self/status")


def write_checkpoint(path: str, layers: int) -> int:
  """A random bf16 Llama-3-like checkpoint (d 2048, h 16, k 4, l 128, f 5632, V 32000); bytes."""
  import ml_dtypes
  import numpy as np
  from safetensors.numpy import save_file
  d, h, k, l, f, v = 2048, 16, 4, 128, 5632, 32000
  rng = np.random.default_rng(0)
  rand = lambda *shape: (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)
  ones = lambda n: np.ones((n,), ml_dtypes.bfloat16)
  os.makedirs(path, exist_ok=True)
  weight_map, total = {}, 0
  groups = [[("embed",)]] + [[("layer", i), ("layer", i + 1)] for i in range(0, layers, 2)] + [[("head",)]]
  for s, group in enumerate(groups):
    tensors = {}
    for item in group:
      if item[0] == "embed":
        tensors["model.embed_tokens.weight"] = rand(v, d)
      elif item[0] == "head":
        tensors.update({"lm_head.weight": rand(v, d), "model.norm.weight": ones(d)})
      elif item[1] < layers:
        p = f"model.layers.{item[1]}."
        tensors.update({p + "input_layernorm.weight": ones(d), p + "post_attention_layernorm.weight": ones(d),
                        p + "self_attn.q_proj.weight": rand(h * l, d), p + "self_attn.k_proj.weight": rand(k * l, d),
                        p + "self_attn.v_proj.weight": rand(k * l, d), p + "self_attn.o_proj.weight": rand(d, h * l),
                        p + "mlp.gate_proj.weight": rand(f, d), p + "mlp.up_proj.weight": rand(f, d),
                        p + "mlp.down_proj.weight": rand(d, f)})
    file = f"model-{s + 1:05d}-of-{len(groups):05d}.safetensors"
    save_file(tensors, os.path.join(path, file), metadata={"format": "pt"})
    weight_map.update({name: file for name in tensors})
    total += sum(x.nbytes for x in tensors.values())
    del tensors
  with open(os.path.join(path, "model.safetensors.index.json"), "w") as fh:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh)
  config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": v, "hidden_size": d,
            "intermediate_size": f, "num_hidden_layers": layers, "num_attention_heads": h,
            "num_key_value_heads": k, "head_dim": l, "rms_norm_eps": 1e-5, "hidden_act": "silu",
            "tie_word_embeddings": False, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
            "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}
  with open(os.path.join(path, "config.json"), "w") as fh:
    json.dump(config, fh)
  return total


def measure(method: str, path: str) -> dict:
  """Runs in its own process: RSS before, peak, and what is held after loading `path` by `method`."""
  sys.path.insert(0, REPO_ROOT)
  import jax
  from guide_jax import importers, sharding
  jax.devices()
  before = _rss_bytes()
  start = time.perf_counter()
  if method == "import":
    params, config = importers.load(path, mesh=sharding.make_mesh(model_parallel=1))
    jax.block_until_ready(params)
    assert config.param_dtype == "bfloat16"
  else:
    from safetensors.numpy import load_file
    params = [load_file(os.path.join(path, name)) for name in sorted(os.listdir(path))
              if name.endswith(".safetensors")]
  seconds = time.perf_counter() - start
  held = _rss_bytes()
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {"method": method, "rss_before": before, "rss_peak": peak, "rss_after": held, "seconds": seconds}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, default=16)
  parser.add_argument("--out", default=None, help="JSON report path (e.g. reports/hf_import_memory.json)")
  parser.add_argument("--measure", choices=("import", "peer"), help=argparse.SUPPRESS)
  parser.add_argument("--path", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.measure:
    print(json.dumps(measure(args.measure, args.path)))
    return
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "teacher")
    nbytes = write_checkpoint(path, args.layers)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    results = {}
    for method in ("import", "peer"):
      out = subprocess.run([sys.executable, os.path.abspath(__file__), "--measure", method, "--path", path],
                           check=True, capture_output=True, text=True, env=env).stdout
      results[method] = json.loads(out.strip().splitlines()[-1])
  for r in results.values():
    r["peak_over_checkpoint"] = (r["rss_peak"] - r["rss_before"]) / nbytes
    r["held_over_checkpoint"] = (r["rss_after"] - r["rss_before"]) / nbytes
  report = {"command": f"python benchmarks/hf_import_memory.py --layers {args.layers}"
                       + (f" --out {args.out}" if args.out else ""),
            "checkpoint_bytes": nbytes, "dtype": "bfloat16", "layers": args.layers, **results,
            "import_over_peer": results["import"]["peak_over_checkpoint"] / results["peer"]["peak_over_checkpoint"]}
  gib = 1 << 30
  print(f"bf16 checkpoint {nbytes / gib:.2f} GiB ({args.layers} layers)")
  for name, r in results.items():
    print(f"  {name:6s}: RSS before {r['rss_before'] / gib:.2f} GiB, peak {r['rss_peak'] / gib:.2f} GiB, "
          f"(peak - before) / checkpoint = {r['peak_over_checkpoint']:.3f}, held {r['held_over_checkpoint']:.3f}, "
          f"{r['seconds']:.1f} s")
  print(f"  import / peer peak ratio: {report['import_over_peer']:.3f}")
  if args.out:
    sys.path.insert(0, REPO_ROOT)
    from guide_jax.data.atomic import atomic_write_json
    atomic_write_json(args.out, report)


if __name__ == "__main__":
  main()
