"""rfd_jax.tools.sweep (with sweep_runs, sweep_devices, summaries): argument parsing, run layout,
skipping, each run's device environment, summaries and the Markdown section.

No training and no GPU or TPU: launches are faked (or --dry_run), results.json files are written by
hand.
"""

import csv
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image
import pytest

from rfd_jax.methods import tasks
from rfd_jax.tools import summaries, sweep, sweep_devices, sweep_runs


def fake_results(method, order, seed, final, avg, forgetting, wall=100.0):
  return {"method": method, "dataset": "digits", "num_tasks": 2, "task_sizes": [5, 5],
          "class_order": tasks.class_order(order, 10), "seed": seed,
          "acc_matrix": [[99.0, None], [50.0, 2 * final - 50.0]], "acc_seen": [avg * 2 - final, final],
          "final_acc": final, "avg_inc_acc": avg, "forgetting": forgetting,
          "task_seconds": [wall / 2, wall / 2], "wall_seconds": wall}


def write_results(workdir, results):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f)


def test_method_entries():
  assert sweep_runs.parse_method_entry("abd") == sweep_runs.MethodEntry("abd", (("method", "abd"),))
  entry = sweep_runs.parse_method_entry("rfd-no-lfd:method=rfd:distill.lambda_lfd=0")
  assert entry.label == "rfd-no-lfd" and entry.method == "rfd"
  assert entry.overrides == (("method", "rfd"), ("distill.lambda_lfd", "0"))
  assert entry.settings == "method=rfd distill.lambda_lfd=0"
  assert sweep_runs.parse_method_entry("abd:config.optim.lr=0.1").overrides == (
      ("method", "abd"), ("optim.lr", "0.1"))
  for bad in ["abd:seed=1", "abd:data.class_order=seed1", "abd:lr", "a/b", "abd:=1"]:
    with pytest.raises(sweep_runs.SweepError):
      sweep_runs.parse_method_entry(bad)
  assert sweep_runs.split_list("finetune, abd:optim.milestones=(1,2),rfd") == [
      "finetune", "abd:optim.milestones=(1,2)", "rfd"]


def test_dry_run_prints_commands_and_skips_finished_runs(tmp_path, capsys):
  workdir = str(tmp_path / "sw")
  write_results(os.path.join(workdir, "abd", "seed0"), fake_results("abd", "seed0", 0, 60, 80, 20))
  status = sweep.main(["--config", "configs/digits.py", "--workdir", workdir,
                       "--orders", "seed0,seed1", "--seeds", "0,3", "--dry_run",
                       "--methods", "abd,nolfd:method=rfd:distill.lambda_lfd=0",
                       "--set", "optim.epochs=1"])
  out = capsys.readouterr().out.splitlines()
  assert status == 0
  assert out[0] == f"skip {workdir}/abd/seed0: results.json exists"
  commands = out[1:]
  assert len(commands) == 7  # 2 labels × 2 orders × 2 seeds, one done
  assert commands[0] == (
      f"{sys.executable} -m rfd_jax.main --config configs/digits.py --workdir {workdir}/abd/seed0-s3"
      " --config.method=abd --config.data.class_order=seed0 --config.seed=3"
      " --config.optim.epochs=1")
  assert commands[-1].endswith(
      f"--workdir {workdir}/nolfd/seed1-s3 --config.method=rfd --config.data.class_order=seed1 "
      "--config.seed=3 --config.optim.epochs=1 --config.distill.lambda_lfd=0")
  assert not os.path.exists(os.path.join(workdir, "summary.md"))


@pytest.mark.parametrize("args", [["--set", "seed=1"], ["--set", "method=abd"],
                                  ["--orders", "1,0,2"], ["--seeds", "x"]])
def test_bad_arguments_exit_2(tmp_path, args, capsys):
  assert sweep.main(["--config", "c.py", "--workdir", str(tmp_path), "--methods", "abd",
                     "--dry_run", *args]) == 2
  assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize("methods, unknown", [("foo", "'foo' (entry 'foo')"),
                                              ("abd,x:method=fdr", "'fdr' (entry 'x')")])
def test_unknown_method_exits_2_listing_the_known_ones(tmp_path, capsys, methods, unknown):
  workdir = tmp_path / "sw"
  assert sweep.main(["--config", "configs/digits.py", "--workdir", str(workdir), "--dry_run",
                     "--methods", methods]) == 2
  captured = capsys.readouterr()
  assert not captured.out and not os.path.exists(workdir)
  errors = captured.err.splitlines()
  assert len(errors) == 1 and errors[0].startswith(f"error: --methods: unknown method {unknown}")
  assert "known methods: rfd, rdfcil, abd, deepinversion, finetune, joint" in errors[0]


def test_runs_summarizes_and_reports_failures(tmp_path, monkeypatch, capsys):
  workdir = str(tmp_path / "sw")
  values = {("abd", "seed0"): (60.0, 80.0, 20.0), ("abd", "seed1"): (64.0, 81.0, 10.0),
            ("abd", "seed2"): (65.0, 85.5, 18.0), ("finetune", "seed0"): (20.0, 45.0, 99.0)}
  launched = []

  def fake_launch(run, config, common, env=None):
    assert env is None  # no --devices: every run sees every device
    launched.append((run.entry.label, run.order))
    if (run.entry.label, run.order) not in values:  # broken, finetune seed1 and seed2 fail
      return 1, 0.5
    final, avg, forgetting = values[run.entry.label, run.order]
    write_results(run.workdir, fake_results(run.entry.method, run.order, run.seed, final, avg,
                                            forgetting, wall=10.0 * len(launched)))
    return 0, 1.0

  monkeypatch.setattr(sweep, "launch", fake_launch)
  write_results(os.path.join(workdir, "finetune", "seed0"),  # made earlier by hand
                fake_results("finetune", "seed0", 0, 20.0, 45.0, 99.0, wall=7.0))
  args = ["--config", "configs/digits.py", "--workdir", workdir, "--orders", "seed0,seed1,seed2",
          "--methods", "abd,finetune,broken:method=abd"]
  status = sweep.main(args + ["--parallel", "2"])
  assert status == 1 and "broken/seed0: exit status 1" in capsys.readouterr().err
  assert ("finetune", "seed0") not in launched and len(launched) == 3 + 2 + 3

  with open(os.path.join(workdir, "summary.csv")) as f:
    rows = {row["label"]: row for row in csv.DictReader(f)}
  assert set(rows) == {"abd", "finetune"}
  abd = np.array([values["abd", o] for o in ("seed0", "seed1", "seed2")])
  for i, key in enumerate(["final_acc", "avg_inc_acc", "forgetting"]):
    assert float(rows["abd"][f"{key}_mean"]) == pytest.approx(abd[:, i].mean())
    assert float(rows["abd"][f"{key}_std"]) == pytest.approx(abd[:, i].std(ddof=1))
  assert rows["finetune"]["runs"] == "1" and rows["finetune"]["final_acc_std"] == ""
  assert rows["finetune"]["orders"] == "seed0 (1/3 runs)"
  with open(os.path.join(workdir, "summary.md")) as f:
    markdown = f.read()
  assert (f"| `abd` |  | seed0, seed1, seed2 | 0 | {abd[:, 0].mean():.2f} ± "
          f"{abd[:, 0].std(ddof=1):.2f} |") in markdown
  assert "| `finetune` |  | seed0 (1/3 runs) | 0 | 20.00 | — | 45.00 | — | 99.00 | 7 |" in markdown
  final, avg, _ = values["abd", "seed1"]
  assert f"| `abd` | seed1 | 0 | {2 * avg - final:.2f} / {final:.2f} |" in markdown  # per run A_t
  assert os.path.getsize(os.path.join(workdir, "comparison.png")) > 0

  # Resuming skips every finished run; only the failures run again.
  launched.clear()
  assert sweep.main(args) == 1
  assert sorted(launched) == [("broken", o) for o in ("seed0", "seed1", "seed2")] + [
      ("finetune", "seed1"), ("finetune", "seed2")]


def test_devices_give_each_concurrent_run_a_gpu_of_its_own(tmp_path, monkeypatch, capsys):
  workdir = str(tmp_path / "sw")
  running, seen, lock = set(), [], threading.Lock()

  def fake_run(command, stdout, stderr, check, env):  # launch()'s subprocess.run
    del stdout, stderr, check
    device = env["CUDA_VISIBLE_DEVICES"]
    with lock:
      assert device not in running  # never two runs on one GPU at a time
      running.add(device)
      seen.append(device)
    time.sleep(0.05)
    order = next(c.split("=", 1)[1] for c in command if c.startswith("--config.data.class_order="))
    write_results(command[command.index("--workdir") + 1],
                  fake_results("finetune", order, 0, 20.0, 45.0, 99.0))
    with lock:
      running.remove(device)
    return subprocess.CompletedProcess(command, 0)

  monkeypatch.setattr(sweep.subprocess, "run", fake_run)
  status = sweep.main(["--config", "configs/digits.py", "--workdir", workdir,
                       "--orders", "seed0,seed1,seed2", "--methods", "finetune",
                       "--devices", "3,5"])  # --parallel defaults to one run per GPU
  out = capsys.readouterr().out
  assert status == 0, out
  assert len(seen) == 3 and set(seen) <= {"3", "5"} and "running on GPU " in out
  with open(os.path.join(workdir, "finetune", "seed0", "log.txt")) as f:
    assert "CUDA_VISIBLE_DEVICES=" in f.readline()
  assert sweep_devices.gpu_ids("0,2") == ["0", "2"] and sweep_devices.gpu_ids("") == []


def _fake_runs(monkeypatch, device_variable, together=1):
  """Fakes launch()'s subprocess.run: each run writes its results; the first `together` runs wait
  for each other (a timeout if the sweep cannot start them side by side). Returns (the environment
  of every run, the most runs seen at one time on each device)."""
  envs, running, most, lock = [], {}, {}, threading.Lock()
  barrier = threading.Barrier(together, timeout=30)

  def fake_run(command, stdout, stderr, check, env):
    del stdout, stderr, check
    device = env[device_variable]
    with lock:
      envs.append(env)
      first = len(envs) <= together
      running[device] = running.get(device, 0) + 1
      most[device] = max(most.get(device, 0), running[device])
    if first:
      barrier.wait()
    time.sleep(0.05)
    flag = lambda name: next(c.split("=", 1)[1] for c in command if c.startswith(f"--{name}="))
    write_results(command[command.index("--workdir") + 1],
                  fake_results("finetune", flag("config.data.class_order"),
                               int(flag("config.seed")), 20.0, 45.0, 99.0))
    with lock:
      running[device] -= 1
    return subprocess.CompletedProcess(command, 0)

  monkeypatch.setattr(sweep.subprocess, "run", fake_run)
  return envs, most


SIX_RUNS = ["--orders", "seed0,seed1,seed2", "--seeds", "0,1", "--methods", "finetune"]


def test_more_runs_than_gpus_share_them_with_a_memory_fraction_each(tmp_path, monkeypatch,
                                                                     capsys):
  """--parallel 4 on 2 GPUs: two runs per GPU at a time, each allowed 45% of its memory."""
  monkeypatch.delenv(sweep_devices.MEM_FRACTION, raising=False)
  envs, most = _fake_runs(monkeypatch, "CUDA_VISIBLE_DEVICES", together=4)
  status = sweep.main(["--config", "configs/digits.py", "--workdir", str(tmp_path / "sw"),
                       *SIX_RUNS, "--devices", "3,5", "--parallel", "4"])
  captured = capsys.readouterr()
  assert status == 0, captured.err
  assert len(envs) == 6 and most == {"3": 2, "5": 2}
  assert all(env[sweep_devices.MEM_FRACTION] == "0.45" for env in envs)
  # (JAX itself puts TPU_ML_PLATFORM etc. into os.environ: only the chip settings must be absent)
  assert not any(k.startswith("TPU_") and k not in os.environ for env in envs for k in env)
  assert "running on GPU 3" in captured.out and "running on GPU 5" in captured.out
  with open(tmp_path / "sw" / "finetune" / "seed2-s1" / "log.txt") as f:
    assert f"{sweep_devices.MEM_FRACTION}=0.45 " in f.readline()


@pytest.mark.parametrize("gpus, parallel, expected", [
    # (GPU, memory fraction or None: JAX's default) of each slot
    (["0", "1"], 2, [("0", None), ("1", None)]),
    (["0", "1"], 1, [("0", None), ("1", None)]),  # fewer runs than GPUs: any free GPU
    (["0", "1"], 3, [("0", "0.45"), ("1", None), ("0", "0.45")]),  # GPU 1 keeps its one run
    (["0"], 3, [("0", "0.30")] * 3),
    (["0", "1"], 8, [("0", "0.22"), ("1", "0.22")] * 4),  # 0.225 rounded down: 4 × 0.22 ≤ 0.9
])
def test_gpu_slots_for_n_runs_on_m_gpus(gpus, parallel, expected):
  slots = sweep_devices.slots("gpu", gpus, parallel, environ={})
  assert [(s.env["CUDA_VISIBLE_DEVICES"], s.env.get(sweep_devices.MEM_FRACTION))
          for s in slots] == expected
  assert all(set(s.env) <= {"CUDA_VISIBLE_DEVICES", sweep_devices.MEM_FRACTION} for s in slots)
  assert [s.name for s in slots] == [f"GPU {gpu}" for gpu, _ in expected]


def test_gpu_slots_keep_a_memory_fraction_the_environment_sets():
  slots = sweep_devices.slots("gpu", ["0"], 2, environ={sweep_devices.MEM_FRACTION: "0.3"})
  assert [s.env for s in slots] == [{"CUDA_VISIBLE_DEVICES": "0"}] * 2
  assert sweep_devices.slots("gpu", [], 4, environ={}) == []


def test_tpu_slots_give_each_process_one_chip_and_its_own_ports():
  slots = sweep_devices.slots("tpu", ["0", "1", "2", "3"], 4, environ={})
  assert slots[1] == sweep_devices.Slot("TPU chip 1", {
      "TPU_VISIBLE_CHIPS": "1", "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,1,1",
      "TPU_PROCESS_BOUNDS": "1,1,1", "TPU_MESH_CONTROLLER_ADDRESS": "localhost:8478",
      "TPU_MESH_CONTROLLER_PORT": "8478", "TPU_PROCESS_PORT": "8479",
      "RFD_JAX_DISTRIBUTED": "0"})
  assert [s.env["TPU_VISIBLE_CHIPS"] for s in slots] == ["0", "1", "2", "3"]
  ports = [int(s.env[k]) for s in slots for k in ("TPU_MESH_CONTROLLER_PORT", "TPU_PROCESS_PORT")]
  assert len(set(ports)) == 8  # no two processes, nor a process's two servers, share a port
  assert not any(sweep_devices.MEM_FRACTION in s.env or "CUDA_VISIBLE_DEVICES" in s.env
                 for s in slots)
  assert len(sweep_devices.slots("tpu", ["0", "1", "2", "3"], 2, environ={})) == 4


def test_tpu_runs_one_per_chip(tmp_path, monkeypatch, capsys):
  """--device_kind tpu --devices auto on a (faked) 2-chip TPU VM: three runs, never two on a chip,
  each with its chip's environment."""
  monkeypatch.setattr(sweep_devices, "_tpu_chip_count", lambda: 2)
  envs, most = _fake_runs(monkeypatch, "TPU_VISIBLE_CHIPS", together=2)
  status = sweep.main(["--config", "configs/digits.py", "--workdir", str(tmp_path / "sw"),
                       "--orders", "seed0,seed1,seed2", "--methods", "finetune",
                       "--device_kind", "tpu", "--devices", "auto"])
  captured = capsys.readouterr()
  assert status == 0, captured.err
  assert len(envs) == 3 and most == {"0": 1, "1": 1}
  for env in envs:
    chip = int(env["TPU_VISIBLE_CHIPS"])
    assert env["TPU_MESH_CONTROLLER_PORT"] == str(8476 + 2 * chip)
    assert env["TPU_PROCESS_BOUNDS"] == env["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "1,1,1"
    assert env["RFD_JAX_DISTRIBUTED"] == "0" and "CUDA_VISIBLE_DEVICES" not in env
  assert "running on TPU chip " in captured.out and not captured.err


@pytest.mark.parametrize("args, message", [
    (["--device_kind", "tpu", "--devices", "0,1", "--parallel", "3"],
     "--parallel 3 with 2 TPU chip(s) (--devices): a chip takes one process at a time"),
    (["--device_kind", "tpu", "--devices", "0,x"], "TPU chip ids are integers, got 'x'"),
    (["--devices", "0,1,0"], "--devices 0,1,0: 0 listed twice"),
    (["--devices", "0", "--parallel", "91"], "91 runs on one GPU leave each no memory"),
])
def test_bad_device_arguments_exit_2_with_one_error_line(tmp_path, monkeypatch, capsys, args,
                                                         message):
  monkeypatch.setattr(sweep.subprocess, "run", None)  # nothing may start
  assert sweep.main(["--config", "configs/digits.py", "--workdir", str(tmp_path / "sw"),
                     "--methods", "finetune", *args]) == 2
  errors = capsys.readouterr().err.splitlines()
  assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], errors
  assert not os.path.exists(tmp_path / "sw")


def test_tpu_auto_without_chips_exits_2(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(sweep_devices, "_tpu_chip_count", lambda: 0)
  assert sweep.main(["--config", "configs/digits.py", "--workdir", str(tmp_path / "sw"),
                     "--methods", "finetune", "--device_kind", "tpu", "--devices", "auto"]) == 2
  assert capsys.readouterr().err.startswith("error: --devices auto: no TPU chip found")


def test_unknown_device_kind_exits_2(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    sweep.main(["--config", "configs/digits.py", "--workdir", str(tmp_path), "--methods",
                "finetune", "--device_kind", "xpu"])
  assert exit_info.value.code == 2
  assert "invalid choice: 'xpu'" in capsys.readouterr().err


@pytest.mark.parametrize("nvidia_smi, kind, args, warned", [
    ("/usr/bin/nvidia-smi", "gpu", ["--parallel", "2"], "preallocates 75% of every GPU"),
    (None, "gpu", ["--parallel", "2"], None),  # no GPU machine: nothing to warn about
    ("/usr/bin/nvidia-smi", "gpu", [], None),  # one run at a time
    ("/usr/bin/nvidia-smi", "gpu", ["--parallel", "2", "--devices", "0,1"], None),
    (None, "tpu", ["--parallel", "2"], "a TPU chip takes one process at a time"),
])
def test_parallel_runs_on_every_device_warn_on_one_line(tmp_path, monkeypatch, capsys,
                                                        nvidia_smi, kind, args, warned):
  monkeypatch.setattr(sweep_devices.shutil, "which",
                      lambda name: nvidia_smi if name == "nvidia-smi" else None)
  assert sweep.main(["--config", "configs/digits.py", "--workdir", str(tmp_path / "sw"),
                     "--methods", "finetune", "--device_kind", kind, "--dry_run", *args]) == 0
  errors = capsys.readouterr().err.splitlines()
  if warned is None:
    assert not errors
  else:
    assert len(errors) == 1 and errors[0].startswith("warning: ") and warned in errors[0]


def test_summarize_only_and_markdown_section(tmp_path, capsys):
  workdir = str(tmp_path / "sw")
  for order, final in [("seed0", 60.0), ("seed1", 70.0)]:
    write_results(os.path.join(workdir, "abd", order), fake_results("abd", order, 0, final, 80, 5))
  write_results(os.path.join(workdir, "x", "seed0-s2"), fake_results("joint", "seed0", 2, 99, 99, 1))
  doc = tmp_path / "results.md"
  doc.write_text("# Results\n\nhand-written intro\n\n<!-- sweep:digits:begin -->\nold table\n"
                 "<!-- sweep:digits:end -->\n\nhand-written notes\n")
  args = ["--workdir", workdir, "--summarize_only", "--output", str(doc), "--section", "digits"]
  assert sweep.main(args) == 0
  text = doc.read_text()
  assert text.startswith("# Results\n\nhand-written intro\n\n<!-- sweep:digits:begin -->\n")
  assert text.endswith("<!-- sweep:digits:end -->\n\nhand-written notes\n")
  assert "old table" not in text and "python -m rfd_jax.tools.sweep --workdir" in text
  assert "| `abd` |  | seed0, seed1 | 0 | 65.00 ± 7.07 |" in text
  assert "| `x` | `method=joint` | seed0 | 2 | 99.00 |" in text
  # a second section is appended; the first is kept
  assert sweep.main(args[:-1] + ["other"]) == 0
  text = doc.read_text()
  assert text.count("<!-- sweep:digits:begin -->") == 1 and "hand-written notes" in text
  assert text.rstrip().endswith("<!-- sweep:other:end -->")


def test_replace_section_creates_the_file_and_rejects_a_lone_begin(tmp_path):
  path = str(tmp_path / "docs" / "new.md")
  summaries.replace_section(path, "a", "table\n")
  with open(path) as f:
    assert f.read() == "<!-- sweep:a:begin -->\ntable\n<!-- sweep:a:end -->\n"
  with open(path, "w") as f:
    f.write("<!-- sweep:a:begin -->\n")
  with pytest.raises(sweep_runs.SweepError):
    summaries.replace_section(path, "a", "table")


def test_a_stray_run_in_the_layout_is_an_error(tmp_path, capsys):
  workdir = str(tmp_path / "sw")
  write_results(os.path.join(workdir, "abd", "seed0"), fake_results("abd", "seed1", 0, 1, 1, 1))
  assert sweep.main(["--config", "c.py", "--workdir", workdir, "--methods", "abd",
                     "--dry_run"]) == 1
  assert "class order" in capsys.readouterr().err


def test_comparison_png_size(tmp_path):
  summaries.save_comparison(str(tmp_path / "c.png"), {"a": [[90, 70], [80, 60]], "b": [[90, 40]]},
                            [5, 10])
  assert Image.open(tmp_path / "c.png").size == (1280, 480)


def test_a_run_that_writes_another_runs_results_fails_without_stopping_the_sweep(
    tmp_path, monkeypatch, capsys):
  def fake_run(command, stdout, stderr, check, env):
    del stdout, stderr, check, env
    order = next(c.split("=", 1)[1] for c in command if c.startswith("--config.data.class_order="))
    write_results(command[command.index("--workdir") + 1],
                  fake_results("finetune", order, 7, 20.0, 45.0, 99.0))  # seed 7, not 0
    return subprocess.CompletedProcess(command, 0)

  monkeypatch.setattr(sweep.subprocess, "run", fake_run)
  assert sweep.main(["--config", "configs/digits.py", "--workdir", str(tmp_path / "sw"),
                     "--orders", "seed0,seed1", "--methods", "finetune"]) == 1
  err = capsys.readouterr().err
  assert err.count("is a run of method=finetune seed=7, not the expected method=finetune "
                   "seed=0") == 2, err
