"""GUIDE students out to MaxText (tier): `convert --format=maxtext` output restored by MaxText's own
load_parameters_path (through the maxtext.yml convert wrote) gives guide_jax's logits within 1e-5,
scanned and unscanned; README's route runs as written: MaxText pre-training and distillation start
from the student; the pre-training run's own checkpoint goes back in as a teacher."""
import math
import os
import re

import jax
import numpy as np
import pytest

pytest.importorskip("maxtext.configs.pyconfig")

import maxtext_support as S  # noqa: E402
from guide_jax import checkpoints, convert, maxtext_compat, model, teachers  # noqa: E402
from guide_jax.config import GuideConfig  # noqa: E402


def _student(teacher, out, output_format, **kw):
  """convert (in process) of `teacher` into a 1-layer, half-width student."""
  return convert.convert(teacher.items, lambda t: t.replace(d_model=32, n_layers=1, mlp_dim=64), out,
                         guide=GuideConfig(blocks="all"), output_format=output_format,
                         teacher_settings=teacher.settings, **kw)


@pytest.mark.parametrize("name,scan", [("scanned", True), ("llama31", False)])
def test_student_logits_equal_maxtext(tier, tmp_path, name, scan):
  """The GUIDE student written with --format=maxtext (scanned, and unscanned with Llama 3.1's
  interleaved RoPE pairs) and loaded by MaxText from its maxtext.yml equals guide_jax's forward of
  the same student (convert --format=guide_jax) within 1e-5."""
  teacher = tier.teacher(name)
  info = _student(teacher, str(tmp_path / "mt"), "maxtext", maxtext_scan_layers=scan)
  _student(teacher, str(tmp_path / "gj"), "guide_jax")
  params, cfg = checkpoints.load_params(str(tmp_path / "gj"))
  ours = np.asarray(model.apply(cfg, params, S.TOKENS, positions=teacher.positions))
  assert info["maxtext_settings"]["scan_layers"] is scan
  mx_model, mesh = S.build(S.config(str(tmp_path / "mt" / "maxtext.yml")))
  assert S.rel_err(S.forward(mx_model, mesh, teacher.positions), ours) < S.RTOL


def test_bf16_student_restores_in_maxtext(tier, tmp_path):
  """--maxtext_dtype=bfloat16: MaxText's own params-only restore (checkpointing.load_params_from_path,
  what load_parameters_path runs) into the model its maxtext.yml builds (float32 weights) gives
  exactly the student's params rounded to bfloat16, in MaxText's layout."""
  teacher = tier.teacher("llama31")
  _student(teacher, str(tmp_path / "mt"), "maxtext", maxtext_scan_layers=False, maxtext_dtype="bfloat16")
  _student(teacher, str(tmp_path / "gj"), "guide_jax")
  params, cfg = checkpoints.load_params(str(tmp_path / "gj"))
  want = maxtext_compat.to_maxtext(params, cfg, False, dtype="bfloat16")
  mx_cfg = S.config(str(tmp_path / "mt" / "maxtext.yml"))
  state = S.nnx.state(S.abstract(mx_cfg), S.nnx.Param)
  restored = S.checkpointing.load_params_from_path(mx_cfg.load_parameters_path, state, 1).to_pure_dict()
  got = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
         for path, v in jax.tree_util.tree_flatten_with_path(restored)[0]}
  assert sorted(got) == sorted(want)
  for k, v in want.items():
    assert np.asarray(v).dtype == np.dtype(jax.numpy.bfloat16), k
    np.testing.assert_array_equal(got[k], np.asarray(v).astype(got[k].dtype), err_msg=k)


def _losses(log, pattern):
  return {int(m.group(1)): float(m.group(2)) for m in re.finditer(pattern, log)}


def test_readme_route_pretrains_and_distills(tier):
  """README's maxtext-route block as written: convert prints the student's MaxText settings;
  MaxText's pre_train.train restores the student through load_parameters_path and trains 3 steps
  with a finite loss; train_distill (tunix shims) trains the same student against the teacher
  for 3 steps with a finite loss."""
  route = tier.route()
  log = route["log"]
  assert "MaxText settings of the student: decoder_block=llama2 base_emb_dim=32" in log
  assert f"restoring params from {route['work']}/student/0/items" in log
  pretrain = _losses(log, r"completed step: (\d+), .*?, loss: ([-\w.]+)")
  assert sorted(pretrain) == [0, 1, 2] and all(math.isfinite(v) for v in pretrain.values()), pretrain
  distill = _losses(log, r"Train step (\d+) training loss: ([-\w.]+)")
  assert sorted(distill) == [1, 2, 3] and all(math.isfinite(v) for v in distill.values()), distill
  hard = re.findall(r"Distillation metrics \| total_loss=\S+ hard_loss=([-\w.]+)", log)
  # The distillation student starts from the same GUIDE params on the same synthetic batch.
  assert hard and abs(float(hard[0]) - pretrain[0]) < 2e-3, (hard, pretrain)


def test_pretrained_student_back_as_teacher(tier):
  """The pre-training run's own training checkpoint (<run>/checkpoints/<step>/items, optimizer
  state beside the params), named by its run directory with the student's maxtext.yml as settings,
  reads as a teacher whose logits equal MaxText's forward of that checkpoint."""
  work = tier.route()["work"]
  run, yml = os.path.join(work, "maxtext", "pretrain"), os.path.join(work, "student", "maxtext.yml")
  source = teachers.Source(run, settings=yml)
  found = teachers.describe(source)
  latest = max(int(s) for s in os.listdir(os.path.join(run, "checkpoints")) if s.isdigit())
  assert found.format == "maxtext" and found.where == os.path.join(run, "checkpoints", str(latest), "items")
  assert latest == 2
  mx_model, mesh = S.build(S.config(yml, load_parameters_path=found.where))
  assert S.rel_err(S.ours(source), S.forward(mx_model, mesh)) < S.RTOL
