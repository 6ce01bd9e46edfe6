"""Merge the JSON of benchmarks/pca.py and benchmarks/train.py into one report JSON.

  python -m benchmarks.pca --json_out=reports/benchmarks_pca.json
  python -m benchmarks.train --json_out=reports/benchmarks_train.json
  python -m benchmarks.report reports/benchmarks_pca.json reports/benchmarks_train.json \
      --json_out=reports/benchmarks.json

The merged file has the headline fields pca_ratio_to_limit, pca_speedup_vs_sklearn, guide_init_s,
mfu, kd_cost_ratio and device (plus the commands that produced them), and both inputs in full.
"""
import argparse
import json
import os
import sys

if __package__ in (None, ""):  # `python benchmarks/report.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

HEADLINE = {"pca": ("pca_ratio_to_limit", "pca_speedup_vs_sklearn", "guide_init_s", "guide_init_memory_ratio"),
            "train": ("mfu", "kd_cost_ratio", "kd_cost_vs_predicted", "tokens_per_s")}


def merge(pca: dict, train: dict) -> dict:
  """The headline fields of both benchmark outputs, the device, the commands, and both in full."""
  for name, data in (("pca", pca), ("train", train)):
    if data.get("benchmark") != name:
      raise ValueError(f"expected the JSON of benchmarks/{name}.py, got benchmark={data.get('benchmark')!r}")
  devices = {pca["device"], train["device"]}
  if len(devices) != 1:
    raise ValueError(f"the two benchmarks ran on different devices: {sorted(devices)}")
  out = {"device": pca["device"], "commands": {"pca": pca["command"], "train": train["command"]}}
  for name, data in (("pca", pca), ("train", train)):
    for key in HEADLINE[name]:
      out[key] = data.get(key)
  out["goals"] = pca.get("goals", [])
  out["pca"], out["train"] = pca, train
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("pca_json")
  p.add_argument("train_json")
  p.add_argument("--json_out", required=True)
  args = p.parse_args(argv)
  loaded = []
  for path in (args.pca_json, args.train_json):
    with open(path) as f:
      loaded.append(json.load(f))
  out = merge(*loaded)
  common.write_json_atomic(args.json_out, out)
  for key in ("device", *HEADLINE["pca"], *HEADLINE["train"]):
    print(f"{key}: {out[key]}")
  print(f"wrote {args.json_out}")


if __name__ == "__main__":
  main()
