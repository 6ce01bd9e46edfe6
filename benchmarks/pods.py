r"""Pod-scale KD train steps compiled from shapes on virtual CPU devices: per-device memory against
TPU HBM, collective bytes against the analytic FSDP volume, compile time scanned vs unrolled.

  nice -n 5 python -m benchmarks.pods --out=reports/pods      # every cell; resumable (rerun continues)
  python -m benchmarks.pods --smoke --out=/tmp/pods_smoke     # tiny shapes on 8 devices, ~1 minute (a test)

Each cell lowers and compiles guide_jax.trainer.make_train_step (AdamW, KD alpha 0.5, seq 2048)
from jax.ShapeDtypeStructs on their shardings (trainer.abstract_state; the teacher from
sharding.abstract_params in bfloat16, as a Hugging Face teacher is read): no array is allocated.
One subprocess per device count (XLA_FLAGS=--xla_force_host_platform_device_count=N) appends its
cells to <out>.cells/cells.jsonl (a rerun skips the cells there); the parent writes <out>.json and
<out>.md from them.

Memory: compiled.memory_analysis() per device: arguments + outputs + temporaries - aliased (the
donated params and optimizer state), against the HBM of a v5e (16 GiB), v4 (32 GiB) and v5p
(95 GiB) chip; a cell "fits" a chip when that total is <= 90% of its HBM (room for the runtime).
A CPU compile is a proxy for TPU memory: XLA's TPU compiler schedules, fuses and rematerializes
differently (and has the fused attention kernels this CPU program does not), so the figures are
the program's buffers as XLA:CPU assigns them, not a measurement on a TPU.

Collectives: every all-gather, reduce-scatter, all-reduce, all-to-all and collective-permute of the
compiled HLO, its bytes (the gathered result of an all-gather, the operand of the others) times
how often it runs (while-loop trip counts: scanned layers, microbatches, loss chunks), per device
per step. Analytic FSDP volume (analytic_collectives), per microbatch: every parameter sharded over
'fsdp' all-gathered where used -- the layers' kernels in the compute dtype (model.gathered casts
before gathering), norm scales and the output layer in their stored dtype, a layer's weights twice
under remat (forward and backward), the rest once -- plus its gradient reduced once in float32;
the KD teacher's sharded params gathered once in their own dtype (bf16); gradients of params that
are not sharded over 'fsdp' all-reduced. XLA's CPU compiler emits each reduce-scatter as an
all-reduce of the same operand followed by a slice, so the gradient reductions show up there as
all-reduces of the same bytes. Only meshes with model = 1 are compared (tensor-parallel activation
collectives are not modeled).
"""
import argparse
import collections
import json
import math
import os
import re
import subprocess
import sys
import time

if __package__ in (None, ""):  # `python benchmarks/pods.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GIB = 1024 ** 3
HBM_GIB = {"v5e": 16, "v4": 32, "v5p": 95}
FIT_FRACTION = 0.9
SEQ = 2048
GLOBAL_BATCH = 512            # sequences of 2048: ~1M tokens per step
DEVICE_COUNTS = (8, 16, 32, 64)
PAIRS = (("student_400m", "teacher_1_6b"), ("student_1b", "teacher_7b"))
MICRO_ROWS = (4, 2, 1)        # microbatch rows per device tried, largest first
LOSS_CHUNK = 512
REMAT = "full"
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$")


# ------------------------------------------------------------------------------- HLO collectives
def _shape_bytes(text: str) -> int:
  return sum(_DTYPE_BYTES[dt] * math.prod(int(x) for x in dims.split(",") if x)
             for dt, dims in _SHAPE.findall(text))


def hlo_collectives(hlo_text: str, details=None) -> dict:
  """{kind: {'bytes': per-device bytes per execution of the program, 'ops': static op count}} of a
  compiled (optimized, SPMD-partitioned) HLO module's text.

  Bytes of one op: an all-gather's result, the operand of a reduce-scatter / all-reduce /
  all-to-all / collective-permute (async pairs: the -start op's operands, or the -done result for
  an all-gather). Each op counts once per execution of its computation: computations called from a
  while loop run known_trip_count times per call (or N for jax's 'counter < N' condition), other
  calls once. details: a list that gets (kind, bytes, times, op_name) of every op.
  """
  comps, entry, current = {}, None, None
  for line in hlo_text.splitlines():
    if current is None:
      m = re.match(r"^(ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$", line)
      if m:
        current = m.group(2)
        comps[current] = []
        if m.group(1):
          entry = current
      continue
    if line.startswith("}"):
      current = None
      continue
    comps[current].append(line)
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")

  shapes = {}   # instruction name -> result type text (names are unique within a module)
  parsed = {}
  for name, lines in comps.items():
    out = []
    for line in lines:
      m = _INSTR.match(line)
      if not m:
        continue
      iname, rtype, op, rest = m.groups()
      shapes[iname] = rtype
      out.append((iname, rtype, op, rest))
    parsed[name] = out

  calls = collections.defaultdict(list)  # computation -> [(callee, times)]
  found = collections.defaultdict(list)  # computation -> [(kind, bytes)]
  for name, instrs in parsed.items():
    for iname, rtype, op, rest in instrs:
      if op == "while":
        body = re.search(r"body=%([\w.\-]+)", rest).group(1)
        cond = re.search(r"condition=%([\w.\-]+)", rest).group(1)
        trip = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', rest)
        trips = int(trip.group(1)) if trip else _trips_from_condition(parsed.get(cond, ()), iname)
        calls[name] += [(body, trips), (cond, trips + 1)]
        continue
      for key in ("to_apply", "calls", "branch_computations", "called_computations"):
        for group in re.findall(key + r"=\{?([%\w.\-, ]+)\}?", rest):
          for callee in re.findall(r"%([\w.\-]+)", group):
            if callee in parsed and not (key == "to_apply" and op.startswith(COLLECTIVES)):
              calls[name].append((callee, 1))
      base = op[:-len("-start")] if op.endswith("-start") else op
      if op.endswith("-done") or base not in COLLECTIVES:
        continue
      operands = re.findall(r"%([\w.\-]+)", rest.split("),")[0] if ")," in rest else rest.rsplit(")", 1)[0])
      operand_bytes = sum(_shape_bytes(shapes.get(o, "")) for o in operands)
      result_bytes = _shape_bytes(rtype)
      if base == "all-gather":
        nbytes = result_bytes - (operand_bytes if op.endswith("-start") else 0)
      else:
        nbytes = operand_bytes
      op_name = re.search(r'op_name="([^"]*)"', rest)
      found[name].append((base, nbytes, op_name.group(1) if op_name else iname))

  totals = {k: {"bytes": 0, "ops": 0} for k in COLLECTIVES}
  stack = [(entry, 1)]
  while stack:  # the call graph is a DAG: walk every path with its multiplicity
    name, times = stack.pop()
    for kind, nbytes, where in found.get(name, ()):
      totals[kind]["bytes"] += nbytes * times
      totals[kind]["ops"] += 1
      if details is not None:
        details.append((kind, nbytes, times, where))
    stack += [(callee, times * n) for callee, n in calls.get(name, ())]
  return totals


def _trips_from_condition(cond_instrs, loop: str) -> int:
  """A jax loop's trip count from its condition (counter from 0, ROOT compare(counter, N), LT), for
  HLO dumped before XLA annotates known_trip_count."""
  consts = {n: re.match(r"(-?\d+)\)", rest) for n, t, op, rest in cond_instrs if op == "constant"}
  for n, t, op, rest in cond_instrs:
    if op == "compare" and "direction=LT" in rest:
      args = re.findall(r"%([\w.\-]+)", rest.split(")")[0])
      if len(args) == 2 and consts.get(args[1]):
        return int(consts[args[1]].group(1))
  raise ValueError(f"while loop %{loop}: no known_trip_count and no 'counter < N' condition")


# ------------------------------------------------------------------------------- analytic volume
def analytic_collectives(student, teacher, mesh_shape, accum_steps: int, kd: bool, gather_dtype=None) -> dict:
  """Per-device collective bytes per step of the FSDP KD step (module docstring), by kind:
  {'all_gather', 'reduce', 'total'} ('reduce': gradient reduce-scatters and all-reduces).
  gather_dtype: count every gather at this width instead (XLA:CPU widens bf16 collectives to f32)."""
  import jax  # pylint: disable=g-import-not-at-top
  from guide_jax import model, sharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import AbstractMesh  # pylint: disable=g-import-not-at-top

  mesh = AbstractMesh(tuple(mesh_shape), sharding.MESH_AXES)
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]

  def leaves(config):
    shapes = model.param_shapes(config)
    axes = model.logical_axes(config)
    specs = jax.tree_util.tree_leaves(sharding.logical_to_sharding(axes, mesh, shapes=shapes),
                                      is_leaf=lambda x: hasattr(x, "spec"))
    for (path, shape), sh in zip(jax.tree_util.tree_flatten_with_path(shapes)[0], specs):
      names = [a for entry in sh.spec if entry for a in ((entry,) if isinstance(entry, str) else entry)]
      model_split = math.prod(mesh.shape[a] for a in names if a != "fsdp")
      yield jax.tree_util.keystr(path), shape, "fsdp" in names and mesh.shape["fsdp"] > 1, model_split

  def gather_bytes(config, path, shape, model_split):
    kernel = "layers_" in path and "scale" not in path  # the layers' kernels / biases: compute dtype
    dtype = gather_dtype or (config.dtype if kernel else shape.dtype)
    return shape.size // model_split * jax.numpy.dtype(dtype).itemsize

  gather = reduce = 0
  for path, shape, fsdp, model_split in leaves(student):
    grad = shape.size // model_split * 4
    if fsdp:
      times = 2 if ("layers_" in path and student.remat != "none") else 1
      gather += times * gather_bytes(student, path, shape, model_split)
      reduce += grad + (grad // mesh.shape["fsdp"] if mesh.shape["data"] > 1 else 0)
    elif batch_shards > 1:
      reduce += grad
  if kd:
    for path, shape, fsdp, model_split in leaves(teacher):
      if fsdp:
        gather += gather_bytes(teacher, path, shape, model_split)
  return {"all_gather": gather * accum_steps, "reduce": reduce * accum_steps,
          "total": (gather + reduce) * accum_steps}


# ------------------------------------------------------------------------------- one cell
def configs(student_name: str, teacher_name: str, scan: bool, remat: str, teacher_layers=None, smoke=False):
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  student = common.model_config(student_name, 32768 if not smoke else None, remat=remat, scan_layers=scan)
  teacher = common.model_config(teacher_name, student.vocab_size, scan_layers=scan, param_dtype="bfloat16",
                                dtype="bfloat16")
  if smoke:
    student = student.replace(dtype="bfloat16")
  if teacher_layers:
    teacher = teacher.replace(n_layers=teacher_layers)
  return student, teacher


def _ratios(measured: dict, analytic: dict) -> dict:
  total = sum(v["bytes"] for v in measured.values())
  reduce = measured["reduce-scatter"]["bytes"] + measured["all-reduce"]["bytes"]
  div = lambda a, b: a / b if b else None
  return {"measured": measured, "measured_total": total, "analytic": analytic,
          "ratio_total": div(total, analytic["total"]),
          "ratio_all_gather": div(measured["all-gather"]["bytes"], analytic["all_gather"]),
          "ratio_reduce": div(reduce, analytic["reduce"])}


def _partitioned_hlo(dump_dir: str) -> str:
  """The newest jit_step module XLA dumped right before the CPU backend's float-normalization-bf16
  (the worker's XLA_FLAGS ask for it); the dump is then removed."""
  import glob  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(dump_dir, "*jit_step*before_float-normalization-bf16.txt")),
                 key=os.path.getmtime)
  if not files:
    raise RuntimeError(f"no HLO dumped before float-normalization-bf16 in {dump_dir}")
  with open(files[-1]) as f:
    text = f.read()
  shutil.rmtree(dump_dir, ignore_errors=True)
  return text


def compile_cell(cell: dict, dump_dir=None) -> dict:
  """Lower and compile one cell's KD train step from shapes; its memory, collectives, times.
  dump_dir: where this process's XLA_FLAGS dump HLO (the partitioned program is read from it)."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from guide_jax import sharding, trainer  # pylint: disable=g-import-not-at-top

  student, teacher = configs(cell["student"], cell["teacher"], cell["scan"], cell["remat"],
                             cell.get("teacher_layers"), cell.get("smoke", False))
  mesh = sharding.make_mesh(shape=tuple(cell["mesh"]))
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-4, b2=0.95, weight_decay=0.1))
  state = trainer.abstract_state(student, optimizer, mesh)
  rows = cell["micro_rows"] * sharding.batch_shards(mesh) * cell["accum"]
  seq = cell["seq"]
  batch = {k: jax.ShapeDtypeStruct((rows, seq), "float32" if k == "decoder_loss_weights" else "int32",
                                   sharding=sharding.batch_sharding(mesh)) for k in trainer.BATCH_KEYS}
  teacher_params = sharding.abstract_params(teacher, mesh, stacked=teacher.scan_layers)
  step = trainer.make_train_step(student, optimizer, mesh, state, teacher_config=teacher, alpha=0.5, tau=1.0,
                                 accum_steps=cell["accum"], loss_chunk=cell["loss_chunk"])
  t0 = time.perf_counter()
  lowered = step.lower(state.params, state.opt_state, batch, teacher_params)
  t1, c1 = time.perf_counter(), time.process_time()
  compiled = lowered.compile()
  t2, c2 = time.perf_counter(), time.process_time()
  mem = compiled.memory_analysis()
  per_device = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                - mem.alias_size_in_bytes)
  out = {k: v for k, v in cell.items() if k != "collectives"}  # the plan's flag; the measured ones below
  out.update(
      lower_s=t1 - t0, compile_s=t2 - t1, compile_cpu_s=c2 - c1, global_batch=rows, tokens_per_step=rows * seq,
      student_params=student.num_params, teacher_params=teacher.num_params,
      memory={"argument": mem.argument_size_in_bytes, "output": mem.output_size_in_bytes,
              "temp": mem.temp_size_in_bytes, "alias": mem.alias_size_in_bytes, "per_device": per_device},
      fits={chip: per_device <= FIT_FRACTION * gib * GIB for chip, gib in HBM_GIB.items()})
  if dump_dir is not None:
    args = (student, teacher, cell["mesh"], cell["accum"])
    out["collectives"] = {  # compiled: the CPU program; partitioned: before XLA:CPU widens bf16
        "compiled": _ratios(hlo_collectives(compiled.as_text()), analytic_collectives(*args, kd=True,
                                                                                      gather_dtype="float32")),
        "partitioned": _ratios(hlo_collectives(_partitioned_hlo(dump_dir)), analytic_collectives(*args, kd=True))}
  return out


# ------------------------------------------------------------------------------- cells
def cell_key(cell: dict) -> str:
  keys = ("kind", "student", "teacher", "teacher_layers", "devices", "mesh", "micro_rows", "accum", "scan",
          "remat", "seq", "loss_chunk")
  return json.dumps({k: cell.get(k) for k in keys}, sort_keys=True)


def plan(smoke: bool) -> list:
  """Every cell, in the order they run (grouped by device count)."""
  if smoke:
    base = dict(kind="fit", student="tiny_student", teacher="tiny_teacher", devices=8, seq=64, loss_chunk=16,
                remat=REMAT, smoke=True)
    return [dict(base, mesh=[1, 8, 1], micro_rows=1, accum=2, scan=True),
            dict(base, mesh=[8, 1, 1], micro_rows=1, accum=1, scan=False, kind="data_parallel")]
  cells = []
  for n in DEVICE_COUNTS:
    for student, teacher in PAIRS:
      for m in MICRO_ROWS:
        accum = max(GLOBAL_BATCH // (n * m), 1)
        cells.append(dict(kind="fit", student=student, teacher=teacher, devices=n, mesh=[1, n, 1], micro_rows=m,
                          accum=accum, scan=True, remat=REMAT, seq=SEQ, loss_chunk=LOSS_CHUNK))
    if n == 16:  # the v5e headroom: the next smaller microbatch of the 1B pair, even when 4 rows fit
      cells.append(dict(kind="fit", student="student_1b", teacher="teacher_7b", devices=n, mesh=[1, n, 1],
                        micro_rows=2, accum=GLOBAL_BATCH // (n * 2), scan=True, remat=REMAT, seq=SEQ,
                        loss_chunk=LOSS_CHUNK, always=True))
    if n == 16:  # the layout before the 'fsdp' axis: data parallel, every chip holds the whole state
      cells.append(dict(kind="data_parallel", student="student_1b", teacher="teacher_7b", devices=n,
                        mesh=[n, 1, 1], micro_rows=1, accum=GLOBAL_BATCH // n, scan=True, remat=REMAT, seq=SEQ,
                        loss_chunk=LOSS_CHUNK))
    if n == 8:  # compile time: scanned vs unrolled, a 32- and an 80-layer teacher
      for layers in (32, 80):
        for scan in (True, False):
          cells.append(dict(kind="compile_time", student="student_1b", teacher="teacher_7b", teacher_layers=layers,
                            devices=n, mesh=[1, n, 1], micro_rows=1, accum=1, scan=scan, remat=REMAT, seq=SEQ,
                            loss_chunk=LOSS_CHUNK, collectives=False))
  return cells


def read_cells(path: str) -> dict:
  done = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          rec = json.loads(line)
          done[cell_key(rec)] = rec
  return done


def worker(args) -> int:
  """Run this device count's cells not yet in cells.jsonl (this process has --devices devices)."""
  import jax  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == args.devices, (jax.device_count(), args.devices)
  path = os.path.join(args.work_dir, "cells.jsonl")
  done = read_cells(path)
  dump_dir = os.path.join(args.work_dir, f"hlo_dump_{args.devices}") if args.collectives else None
  for cell in plan(args.smoke):
    if cell["devices"] != args.devices or cell.get("collectives", True) != bool(args.collectives) \
        or cell_key(cell) in done:
      continue
    if args.kinds and cell["kind"] not in args.kinds.split(","):
      continue
    if cell["kind"] == "fit" and not cell.get("always") and _fits_with_more_rows(cell, done):
      continue  # a larger microbatch already fits the smallest chip: this one is not needed
    print(f"[{args.devices} devices] compiling {cell_key(cell)}", flush=True)
    try:
      rec = compile_cell(cell, dump_dir)
    except Exception as e:  # pylint: disable=broad-except
      rec = dict(cell, error=f"{type(e).__name__}: {str(e).splitlines()[0][:500] if str(e) else ''}")
    rec["command"] = os.environ.get("PODS_COMMAND")  # the parent's command line that ran this cell
    with open(path, "a") as f:
      f.write(json.dumps(rec) + "\n")
    done[cell_key(rec)] = rec
    _print_cell(rec)
  return 0


def _fits_with_more_rows(cell: dict, done: dict) -> bool:
  for rec in done.values():
    same = all(rec.get(k) == cell.get(k) for k in ("kind", "student", "teacher", "devices", "mesh", "scan"))
    if same and rec.get("micro_rows", 0) > cell["micro_rows"] and rec.get("fits", {}).get("v5e"):
      return True
  return False


def _print_cell(rec: dict) -> None:
  if "error" in rec:
    print(f"  error: {rec['error']}", flush=True)
    return
  mem = rec["memory"]
  line = (f"  {rec['student']}+{rec['teacher']}{'/' + str(rec['teacher_layers']) if rec.get('teacher_layers') else ''} "
          f"mesh {rec['mesh']} micro {rec['micro_rows']} x accum {rec['accum']} (global {rec['global_batch']}) "
          f"scan={rec['scan']}: {mem['per_device'] / GIB:.2f} GiB/device (args {mem['argument'] / GIB:.2f}, "
          f"temp {mem['temp'] / GIB:.2f}); compile {rec['compile_s']:.1f} s")
  for view, c in (rec.get("collectives") or {}).items():
    line += f"; {view} collectives {c['measured_total'] / GIB:.2f} GiB = {c['ratio_total']:.3f} x analytic"
  print(line, flush=True)


# ------------------------------------------------------------------------------- report
def summarize(cells: list, command: str) -> dict:
  fits = [c for c in cells if c["kind"] == "fit" and "error" not in c]
  best = {}
  for c in fits:  # per pair, device count and chip: the largest microbatch that fits
    for chip in HBM_GIB:
      key = (c["student"], c["teacher"], c["devices"], chip)
      if c["fits"][chip] and (key not in best or c["micro_rows"] > best[key]["micro_rows"]):
        best[key] = c
  compile_cells = {(c["teacher_layers"], c["scan"]): c for c in cells if c["kind"] == "compile_time" and "error" not in c}
  ratios = {view: [c["collectives"][view]["ratio_total"] for c in cells if c.get("collectives") and c["mesh"][2] == 1
                   and c["kind"] == "fit"] for view in ("compiled", "partitioned")}
  commands = sorted({c["command"] for c in cells if c.get("command")})
  return {"command": command, "commands": commands, "cells": cells,
          "fits": {"|".join(map(str, k)): {"micro_rows": v["micro_rows"], "accum": v["accum"], "mesh": v["mesh"],
                                           "per_device_gib": v["memory"]["per_device"] / GIB}
                   for k, v in sorted(best.items())},
          "compile_time": {f"{layers}_{'scanned' if scan else 'unrolled'}": c["lower_s"] + c["compile_s"]
                           for (layers, scan), c in sorted(compile_cells.items())},
          "compile_cells": {f"{layers}_{'scanned' if scan else 'unrolled'}": {
              "lower_s": c["lower_s"], "compile_s": c["compile_s"], "compile_cpu_s": c.get("compile_cpu_s"),
              "per_device_gib": c["memory"]["per_device"] / GIB, "command": c.get("command")}
                            for (layers, scan), c in sorted(compile_cells.items())},
          "collective_ratio": {view: {"min": min(r), "max": max(r)} if r else None for view, r in ratios.items()}}


def reading(summary: dict) -> list:
  """The report's findings as sentences computed from its cells (markdown lines)."""
  cells = [c for c in summary["cells"] if "error" not in c]
  fits = [c for c in cells if c["kind"] == "fit"]
  lines = ["## Reading", ""]
  shapes = ((16, "v5e"), (8, "v4"), (8, "v5e"), (32, "v5e"), (64, "v5e"))
  for student, teacher in reversed(PAIRS):
    for n, chip in shapes:
      tried = [c for c in fits if (c["student"], c["teacher"], c["devices"]) == (student, teacher, n)]
      if not tried:
        continue
      limit = FIT_FRACTION * HBM_GIB[chip]
      best = summary["fits"].get(f"{student}|{teacher}|{n}|{chip}")
      if best:
        lines.append(f"- {student} + {teacher}, {n} {chip}-shaped chips (mesh {tuple(best['mesh'])}): **fits** with "
                     f"{best['micro_rows']} rows per device x {best['accum']} microbatches (global batch "
                     f"{best['micro_rows'] * n * best['accum']} x {SEQ} tokens): {best['per_device_gib']:.2f} GiB per "
                     f"device of the {limit:.1f} GiB allowed ({HBM_GIB[chip]} GiB HBM)" +
                     "".join(f"; {c['micro_rows']} rows x {c['accum']}: {c['memory']['per_device'] / GIB:.2f} GiB"
                             for c in sorted(tried, key=lambda c: -c["micro_rows"])
                             if c["micro_rows"] < best["micro_rows"]) + ".")
      else:
        low = min(tried, key=lambda c: c["memory"]["per_device"])
        lines.append(f"- {student} + {teacher}, {n} {chip}-shaped chips: **does not fit**; the smallest tried "
                     f"({low['micro_rows']} rows per device) needs {low['memory']['per_device'] / GIB:.2f} GiB of the "
                     f"{limit:.1f} GiB allowed.")
  if fits:
    arg = [c["memory"]["argument"] / GIB for c in fits]
    tmp = [c["memory"]["temp"] / GIB for c in fits]
    lines.append(f"- With the 'fsdp' axis the arguments (student params, AdamW state, teacher, batch) are "
                 f"{min(arg):.2f}-{max(arg):.2f} GiB per device; the temporaries (activations kept under remat, "
                 f"gathered weights, the loss chunks) dominate at {min(tmp):.2f}-{max(tmp):.2f} GiB.")
  for c in cells:
    if c["kind"] == "data_parallel":
      lines.append(f"- The same step data parallel (mesh {tuple(c['mesh'])}, every device holding the whole state): "
                   f"{c['memory']['per_device'] / GIB:.2f} GiB per device ({c['memory']['argument'] / GIB:.2f} GiB "
                   f"of arguments), which fits {', '.join(k for k, v in c['fits'].items() if v) or 'no chip'}.")
  cc = summary.get("compile_cells", {})
  for layers in (32, 80):
    sc, un = cc.get(f"{layers}_scanned"), cc.get(f"{layers}_unrolled")
    if sc and un:
      cpu = (f"; compile CPU seconds {un['compile_cpu_s']:.0f} unrolled vs {sc['compile_cpu_s']:.0f} scanned "
             f"({un['compile_cpu_s'] / sc['compile_cpu_s']:.1f}x)" if sc.get("compile_cpu_s") and un.get("compile_cpu_s")
             else "")
      lines.append(f"- {layers}-layer teacher, 1 row per device on 8 devices: the unrolled step needs "
                   f"{un['per_device_gib']:.1f} GiB per device against {sc['per_device_gib']:.1f} GiB scanned "
                   f"({un['per_device_gib'] / sc['per_device_gib']:.1f}x){cpu}.")
  by_pair = collections.defaultdict(list)
  for c in fits:
    if c.get("collectives"):
      by_pair[(c["student"], c["teacher"], c["devices"])].append(c)
  parts = []
  for (student, teacher, n), group in sorted(by_pair.items()):
    if len({c["accum"] for c in group}) > 1:
      steps = ", ".join(f"{c['collectives']['partitioned']['measured_total'] / GIB:.0f} GiB with {c['accum']}"
                        for c in sorted(group, key=lambda c: c["accum"]))
      parts.append(f"{student} + {teacher} on {n} devices: {steps} microbatches")
  if parts:
    lines.append(f"- Every microbatch gathers the weights again, so the collective bytes per device and step grow "
                 f"with the number of microbatches (partitioned program; {'; '.join(parts)}): memory traded for "
                 f"communication.")
  r = summary["collective_ratio"]
  if r.get("partitioned"):
    lines.append(f"- Collective bytes per step / the analytic FSDP volume, every FSDP cell with model = 1: "
                 f"{r['partitioned']['min']:.3f}-{r['partitioned']['max']:.3f}x in the partitioned program "
                 f"(bf16 gathers as the TPU would move them), {r['compiled']['min']:.3f}-{r['compiled']['max']:.3f}x "
                 f"in the CPU program against the f32 analytic volume (target: within 1.3x).")
  return lines + [""]


def write_markdown(summary: dict, path: str) -> None:
  cells = summary["cells"]
  lines = ["# Pod-scale KD steps compiled from shapes (benchmarks/pods.py)", "",
           "Commands (run from the repository root with `nice -n 10`; each cell in the JSON names its own):",
           ""] + [f"- `{c}`" for c in summary["commands"]] + ["",
           f"Report written by: `{summary['command']}`", "",
           "Every figure is from `jax.jit(...).lower(...).compile()` of guide_jax.trainer's KD train step "
           "(AdamW, KD alpha 0.5, seq 2048, remat 'full', scanned layers except the unrolled compile-time cells, loss chunk 512) on N virtual CPU "
           "devices (`--xla_force_host_platform_device_count=N`), from ShapeDtypeStructs only. **A CPU compile "
           "is a proxy for TPU memory**: XLA's TPU compiler schedules, fuses and rematerializes differently and "
           "has fused attention kernels this CPU program does not use; these are the buffers XLA:CPU assigns "
           "to one device, not a measurement on a TPU. 'Fits' = per-device total <= 90% of the chip's HBM "
           f"({', '.join(f'{k} {v} GiB' for k, v in HBM_GIB.items())}).", ""] + reading(summary) + [
           "## Per-device memory (GiB) and collectives", "",
           "| student + teacher | devices | mesh (data, fsdp, model) | micro rows/device x accum = global batch | "
           "arguments | temporaries | total | v5e | v4 | v5p | collectives GiB/step, CPU program (measured / "
           "analytic f32) | partitioned, before XLA:CPU widens bf16 (measured / analytic) | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  yes = lambda b: "fits" if b else "no"
  for c in sorted(cells, key=lambda c: (c["devices"], c["student"], c["kind"], -c["micro_rows"])):
    if c["kind"] not in ("fit", "data_parallel"):
      continue
    name = f"{c['student']} + {c['teacher']}" + (" (data parallel)" if c["kind"] == "data_parallel" else "")
    if "error" in c:
      lines.append(f"| {name} | {c['devices']} | {tuple(c['mesh'])} | {c['micro_rows']} x {c['accum']} | "
                   f"error: {c['error'][:80]} | | | | | | | | |")
      continue
    m = c["memory"]
    coll = c.get("collectives")
    view = lambda v: (f"{coll[v]['measured_total'] / GIB:.1f} / {coll[v]['analytic']['total'] / GIB:.1f} = "
                      f"{coll[v]['ratio_total']:.3f}x")
    coll_text = f"{view('compiled')} | {view('partitioned')}" if coll else "- | -"
    lines.append(f"| {name} | {c['devices']} | {tuple(c['mesh'])} | {c['micro_rows']} x {c['accum']} = "
                 f"{c['global_batch']} | {m['argument'] / GIB:.2f} | {m['temp'] / GIB:.2f} | "
                 f"{m['per_device'] / GIB:.2f} | {yes(c['fits']['v5e'])} | {yes(c['fits']['v4'])} | "
                 f"{yes(c['fits']['v5p'])} | {coll_text} | {c['compile_s']:.0f} |")
  lines += ["", "## What fits each pod size (largest microbatch per device that fits; mesh (1, N, 1))", "",
            "| student + teacher | devices | v5e (16 GiB) | v4 (32 GiB) | v5p (95 GiB) |", "|---|---|---|---|---|"]
  groups = collections.OrderedDict()
  for key, v in summary["fits"].items():
    s, t, n, chip = key.split("|")
    groups.setdefault((s, t, int(n)), {})[chip] = v
  for (s, t, n), chips in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2])):
    cell = lambda chip: (f"{chips[chip]['micro_rows']} rows x {chips[chip]['accum']} accum "
                         f"({chips[chip]['per_device_gib']:.1f} GiB)" if chip in chips else "none tried fits")
    lines.append(f"| {s} + {t} | {n} | {cell('v5e')} | {cell('v4')} | {cell('v5p')} |")
  if not any(c["kind"] in ("fit", "data_parallel") for c in cells):  # a compile-time-only run: no empty tables
    lines = lines[:lines.index("## Per-device memory (GiB) and collectives")]
  if summary["compile_time"]:
    lines += ["", "## Compile time and memory, scanned vs unrolled (student_1b + teacher_7b widths, 8 devices, "
              "1 row per device, no accumulation)", "",
              "Wall seconds of lower + compile, one process on a machine shared with other jobs (2 cores): "
              "comparable only within one run; the compile's CPU seconds (all its threads) are less sensitive to "
              "that load. Per-device GiB as in the table above.", "",
              "| teacher layers | scanned: wall s / compile CPU s / GiB | unrolled: wall s / compile CPU s / GiB | "
              "unrolled / scanned wall | unrolled / scanned GiB |", "|---|---|---|---|---|"]
    cc = summary["compile_cells"]
    fmt = lambda c: (f"{c['lower_s'] + c['compile_s']:.0f} / "
                     f"{'-' if c['compile_cpu_s'] is None else format(c['compile_cpu_s'], '.0f')} / "
                     f"{c['per_device_gib']:.1f}") if c else "-"
    for layers in (32, 80):
      sc, un = cc.get(f"{layers}_scanned"), cc.get(f"{layers}_unrolled")
      if sc and un:
        wall = (un["lower_s"] + un["compile_s"]) / (sc["lower_s"] + sc["compile_s"])
        ratios = f"{wall:.1f}x | {un['per_device_gib'] / sc['per_device_gib']:.1f}x"
      else:
        ratios = "- | -"
      lines.append(f"| {layers} | {fmt(sc)} | {fmt(un)} | {ratios} |")
  from guide_jax.data import atomic  # pylint: disable=g-import-not-at-top
  atomic.atomic_write_text(path, "\n".join(lines) + "\n")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="the report: <out>.json and <out>.md (cells in <out>.cells/)")
  p.add_argument("--smoke", action="store_true", help="tiny shapes on 8 devices (seconds; what the tests run)")
  p.add_argument("--devices", type=int, default=None, help="(internal) run this device count's cells here")
  p.add_argument("--collectives", type=int, default=1, help="(internal) the cells that read collectives (HLO dumps)")
  p.add_argument("--device_counts", default=None, help="comma-separated subset of device counts to run")
  p.add_argument("--kinds", default=None, help="comma-separated subset of cell kinds to run (fit, data_parallel, "
                 "compile_time)")
  p.add_argument("--report_only", action="store_true", help="write the report from the cells run so far")
  args = p.parse_args(argv)
  args.out = args.out.rstrip("/")
  args.work_dir = args.out + ".cells"
  os.makedirs(args.work_dir, exist_ok=True)
  if args.devices is not None:
    return worker(args)
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  command = common.command_line("benchmarks.pods", argv)
  groups = sorted({(c["devices"], c.get("collectives", True)) for c in plan(args.smoke)}, key=lambda g: (g[0], -g[1]))
  if args.device_counts:
    groups = [g for g in groups if str(g[0]) in args.device_counts.split(",")]
  if args.report_only:
    groups = []
  for n, collectives in groups:
    flags = f"--xla_force_host_platform_device_count={n}"
    if collectives:  # the partitioned program, right before XLA:CPU's float normalization
      flags += (f" --xla_dump_to={os.path.join(args.work_dir, f'hlo_dump_{n}')} --xla_dump_hlo_module_re=jit_step"
                " --xla_dump_hlo_pass_re=^float-normalization-bf16$")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags, TF_CPP_MIN_LOG_LEVEL="3", PODS_COMMAND=command)
    cmd = [sys.executable, "-m", "benchmarks.pods", "--out", args.out, "--devices", str(n),
           "--collectives", str(int(collectives))] + (["--smoke"] if args.smoke else []) + \
          (["--kinds", args.kinds] if args.kinds else [])
    rc = subprocess.call(cmd, cwd=common.REPO_ROOT, env=env)
    if rc:
      print(f"the {n}-device worker exited {rc}; rerun to continue", flush=True)
      return rc
  cells = list(read_cells(os.path.join(args.work_dir, "cells.jsonl")).values())
  summary = summarize(cells, command)
  common.write_json_atomic(args.out + ".json", summary)
  write_markdown(summary, args.out + ".md")
  print(f"wrote {args.out}.json and .md; collective bytes / analytic: {summary['collective_ratio']}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
