r"""What the start-of-run data check costs per GB: SHA-256 of the shards (prepared.load_prepared
verify=True, one thread per shard) and the token-id range pass, next to a plain read of the same
bytes (the peer: what any check must at least pay), measured in the same run.

  python benchmarks/data_hash.py [--gb=1.0] [--shards=4] [--out=reports/data_hash_cost.json]

Writes a prepared-data directory of random uint16 shards into a temporary directory (the page
cache then holds it: figures are for data already on local disk, i.e. after staging), loads it
with and without verification, and prints seconds per GB for each.
"""
import argparse
import hashlib
import os
import platform
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402

from guide_jax import fileio  # noqa: E402
from guide_jax.data import prepare, prepared  # noqa: E402


def _make(directory: str, gb: float, shards: int) -> int:
  """A prepared dir of `shards` random uint16 train shards (~gb GB in all); returns its bytes."""
  rng = np.random.default_rng(0)
  per_shard = int(gb * 2 ** 30 / 2 / shards)
  vocab = os.path.join(directory, prepared.VOCAB_FILE)
  fileio.atomic_write_bytes(vocab, b"not a real sentencepiece model")
  entries = []
  for i in range(shards):
    name = prepared.shard_name("train", i)
    tokens = rng.integers(0, 32000, size=per_shard, dtype=np.uint16)
    np.save(os.path.join(directory, name), tokens, allow_pickle=False)
    entries.append({"file": name, "tokens": per_shard, "bytes": os.path.getsize(os.path.join(directory, name)),
                    "sha256": fileio.sha256_file(os.path.join(directory, name))})
  val = prepare.write_split([np.arange(2, 1000)], directory, "validation", 32000, 1)
  manifest = {"format_version": prepared.FORMAT_VERSION, "source": {"kind": "benchmark"}, "vocab_size": 32000,
              "dtype": "uint16", "eos_id": 1, "vocab": {"file": prepared.VOCAB_FILE,
                                                        "sha256": fileio.sha256_file(vocab)},
              "splits": {"train": {"source_split": "train", "tokens": per_shard * shards, "docs": shards,
                                   "max_id": 31999, "shards": entries},
                         "validation": {"source_split": "validation", **val}}}
  fileio.atomic_write_json(os.path.join(directory, prepared.MANIFEST), manifest)
  return sum(e["bytes"] for e in entries)


def _best(fn, repeats: int = 3) -> float:
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gb", type=float, default=1.0)
  parser.add_argument("--shards", type=int, default=4)
  parser.add_argument("--out", default=os.path.join(REPO_ROOT, "reports", "data_hash_cost.json"))
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory(prefix="guide_jax-hash-bench-") as d:
    nbytes = _make(d, args.gb, args.shards)
    gb = nbytes / 2 ** 30
    files = [os.path.join(d, prepared.shard_name("train", i)) for i in range(args.shards)]

    def plain_read():
      for f in files:
        with open(f, "rb") as fh:
          while fh.readinto(buf):
            pass
    buf = bytearray(1 << 22)
    read_s = _best(plain_read)
    one_thread_s = _best(lambda: [hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files])
    verify_s = _best(lambda: prepared.load_prepared(d, verify=True))  # hashes, threads; recorded max_id
    trust_s = _best(lambda: prepared.load_prepared(d, verify=False))  # no hash: the id range pass
  result = {
      "bytes": nbytes, "shards": args.shards, "cpu_count": os.cpu_count(), "machine": platform.processor() or
      platform.machine(),
      "plain_read_s_per_gb": read_s / gb,
      "sha256_one_thread_s_per_gb": one_thread_s / gb,
      "load_verify_s_per_gb": verify_s / gb,
      "load_no_verify_id_range_s_per_gb": trust_s / gb,
      "verify_over_plain_read": verify_s / read_s,
      "command": "python benchmarks/data_hash.py " + " ".join(argv if argv is not None else sys.argv[1:]),
  }
  for k, v in result.items():
    print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
  fileio.atomic_write_json(args.out, result)
  return result


if __name__ == "__main__":
  main()
