"""The train phases' three ways to feed and run steps (issue "Accelerator path"): batches gathered
on the host every step, gathered on the device from the device-resident train set one call per step
(the CPU default), and a whole epoch per call as one lax.scan (the GPU/TPU default)."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np

import pytest

from rfd_jax.engine import checkpointing, errors, loop, parallel, plan as plan_lib, writers
from rfd_jax.cli import config_validation
from rfd_jax.jobs import dfcil_run, dfcil
from rfd_jax.methods import inversion
from tests import fake_jobs
from tests.train_test import tiny_config


def _config(**overrides):
  config = tiny_config("finetune")
  config.data.num_tasks = 2
  config.ckpt.enabled = False
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


def _run(workdir, config):
  results = dfcil.train_and_evaluate(config, str(workdir))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return {k: v for k, v in results.items() if "seconds" not in k}, records


def test_device_resident_batches_give_the_host_fed_run_exactly(tmp_path):
  # only where the batch is gathered differs, whatever the step: the cheapest learner suffices
  host_fed = _run(tmp_path / "host_fed", _config(**{"data.device_resident": False}))
  resident = _run(tmp_path / "resident", _config(**{"data.device_resident": True}))
  assert resident == host_fed  # results.json and every logged loss, bit for bit
  assert len(resident[0]["acc_matrix"]) == 2


def test_a_scanned_run_stopped_at_an_epoch_end_resumes_exactly(tmp_path, monkeypatch):
  """loop=scan (an epoch per call), stopped by SIGTERM after task 2's first epoch and rerun: the
  uninterrupted run's results and metrics, bit for bit; one record per epoch."""
  config = _config(**{"optim.loop": "scan", "ckpt.enabled": True, "log.every_steps": 1})
  reference = _run(tmp_path / "reference", config)
  steps = [r["step"] for r in reference[1] if "train/loss" in r]
  epoch = steps[0]  # steps per epoch of task 1 (its first record: its first epoch's end)
  assert steps[:3] == [epoch, 2 * epoch, 3 * epoch]  # a record per block: one per epoch
  stop_at = steps[3]  # task 2's first epoch end (task 1's evaluation is one step)
  monkeypatch.setenv(loop.ENV_TEST_KILL_AT, f"{stop_at}:TERM")
  with pytest.raises(checkpointing.Preempted):
    dfcil.train_and_evaluate(config, str(tmp_path / "stopped"))
  monkeypatch.delenv(loop.ENV_TEST_KILL_AT)
  assert _run(tmp_path / "stopped", config) == reference


class _CountingJob(fake_jobs.NullJob):
  """A loop.Job that records the blocks it is asked to run."""

  def __init__(self):
    self.blocks = []

  def run_block(self, position, num_steps):
    self.blocks.append((position.step, num_steps))
    return {"train/loss": jnp.float32(position.step)}


def test_a_resume_inside_a_block_first_completes_that_block(tmp_path):
  """A checkpoint of the host loop (blocks of 1) inside an epoch, resumed by the scanned loop
  (blocks of an epoch): the first block runs to the epoch's end, the next ones are whole."""
  plan = plan_lib.dfcil_plan(num_tasks=1, epoch_steps=[5], epochs=3, ft_epochs=0,
                             has_finetune_phase=False, inversion_iterations=1, inversion_block=1,
                             uses_inversion=False, lr=0.1, lr_decay=0.1, milestones=(),
                             ft_lr=0.0, scan_epochs=True)
  writer = writers.MetricWriter(str(tmp_path), hparams={})
  runner = loop.Loop(plan, checkpoints=None, writer=writer, signals=None, config_dict={},
                     log_every_steps=0, ckpt_every_steps=0, progress=False,
                     invocation_start=0.0)
  job = _CountingJob()
  runner.run(job, start_step=7)
  writer.close()
  assert job.blocks == [(7, 3), (10, 5), (15, 1)]  # main epochs 2 (rest) and 3, then eval


def _job(method="rfd"):
  config = tiny_config(method)
  config.data.num_tasks = 2
  config.optim.loop = "host"
  config_validation.validate(config)
  mesh = parallel.job_mesh(batch_size=config.data.batch_size,
                         eval_batch_size=config.data.eval_batch_size)
  run = dfcil_run.load_run(config, "/nonexistent", mesh)
  rs = dfcil_run.RunState.fresh(run)
  rs.teacher_vars = jax.tree.map(jnp.copy, rs.state.variables)
  rs.gen_state = inversion.create_generator_state(generator=run.generator,
                                                  rng=jax.random.key(3), tx=run.gen_tx)
  return run, rs, dfcil.DfcilJob(run, rs, writer=None)


def _max_diff(a, b):
  return max(float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_a_scanned_epoch_matches_the_host_loop_up_to_float_rounding():
  """One K-step scan against K one-step calls from the same state (the CE step of task 1; every
  train step goes through the same resident_block): same batches and keys, so the parameters agree
  up to XLA's float reassociation inside the loop body (measured ~1e-8 after 2 steps); a wrong
  batch or key moves them by ~1e-3."""
  run, rs, job = _job()
  num_steps = 3
  for task, name in ((0, "main"),):
    step_fn, hparams, distilling = job._hparams(name, task)  # pylint: disable=protected-access
    assert distilling == (task == 1)
    hparams = {**hparams, "lr": jnp.float32(0.05)}
    extra = ()
    if distilling:
      hparams["class_weights"] = rs.class_weights
      extra = (rs.teacher_vars, rs.gen_state.variables)
    rows = job._epoch_rows(task, 1)  # pylint: disable=protected-access
    key = job._task_key(task)  # pylint: disable=protected-access
    epoch_start = np.int32(rows.shape[0])
    host_state, host_metrics = jax.tree.map(jnp.copy, rs.state), []
    for j in range(num_steps):
      host_state, m = step_fn(1, host_state, run.train_data, rows, np.int32(j), key, epoch_start,
                              hparams, *extra)
      host_metrics.append(m)
    scan_state, scan_metrics = step_fn(num_steps, jax.tree.map(jnp.copy, rs.state),
                                       run.train_data, rows, np.int32(0), key, epoch_start,
                                       hparams, *extra)
    chex.assert_trees_all_equal_shapes_and_dtypes(scan_state, host_state)
    assert int(scan_state.step) == int(host_state.step) == num_steps
    assert _max_diff(scan_state.params, rs.state.params) > 1e-4  # the steps did move the model
    assert _max_diff(scan_state.params, host_state.params) < 1e-6
    np.testing.assert_array_equal(scan_state.class_counts, host_state.class_counts)
    for k, v in scan_metrics.items():
      np.testing.assert_allclose(v, np.mean([m[k] for m in host_metrics]), rtol=1e-5, atol=1e-5)
    # a different key (the next epoch's steps) is far off: the test can tell
    other, _ = step_fn(num_steps, jax.tree.map(jnp.copy, rs.state), run.train_data, rows,
                       np.int32(0), key, epoch_start + num_steps, hparams, *extra)
    assert _max_diff(other.params, host_state.params) > 1e-4


def test_auto_loop_is_the_host_loop_on_cpu_and_scan_needs_resident_data():
  config = tiny_config()
  assert dfcil_run.train_loop(config, resident=True) == "host"  # CPU backend here
  config.optim.loop = "scan"
  assert dfcil_run.train_loop(config, resident=True) == "scan"
  try:
    dfcil_run.train_loop(config, resident=False)
  except errors.ConfigError as e:
    assert "config.optim.loop='host'" in str(e)
  else:
    raise AssertionError("scan without device-resident data was accepted")
