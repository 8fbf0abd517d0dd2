"""Tests for the one-call device benchmark (bench/device.sh, bench/device.py): the paper schedule's
step counts, the parsing of the runs' progress lines, the projection, the fake CIFAR-100, the
wheel pins, and (slow) the whole script in its tiny CPU mode."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from bench import device, fake_cifar100
from rfd_jax.data import tfds_source
from rfd_jax.data.prepare import cifar

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_paper_schedule_counts_the_trainers_steps():
  config = device.cifar100_config()
  counts = device.schedule(config, device.CIFAR100_TRAIN_PER_CLASS)
  # 10 tasks of 10 classes × 500 images; 5000 // 128 = 39 full batches per epoch (the last partial
  # batch is dropped); task 0 trains E - E_ft epochs with CE, tasks 1-9 E - E_ft distillation
  # epochs and E_ft fine-tuning epochs, each after an inversion.
  epochs, ft_epochs = config.optim.epochs, config.optim.ft_epochs
  assert (epochs, ft_epochs, config.data.batch_size) == (200, 40, 128)
  assert counts == {"ce": 160 * 39, "distill_main": 9 * 160 * 39, "finetune": 9 * 40 * 39,
                    "inversion": 9 * config.inversion.iterations}


def test_schedule_of_the_two_task_run():
  config = device.cifar100_config(device.gpu_mode({}).e2e_overrides)
  assert device.schedule(config, 100) == {"ce": 3 * 39, "distill_main": 3 * 39,
                                          "finetune": 3 * 39, "inversion": 300}
  assert device.cifar100_config({"dtype": "bfloat16"}).dtype == "bfloat16"


LOG = """\
I1130 02:31:01 train.py:487] compiled and ran the first train step in 7.9s
I1130 02:31:03 train.py:518] task 1/2 main     epoch   1/3  loss 3.9  acc   0.5%  lr 0.1     19 img/s  ETA 0:00:04
I1130 02:31:03 train.py:518] task 1/2 main     epoch   3/3  loss 3.9  acc   0.5%  lr 0.1   2560 img/s  ETA 0:00:04
I1130 02:31:21 inversion.py:207] task 2/2 inversion   100/300  loss 41.0 (ce 3.9 bal 0.0 smooth 0.2 bn 0.7)  0.2 it/s  7 img/s  ETA 0:00:08
I1130 02:31:23 inversion.py:207] task 2/2 inversion   300/300  loss 26.5 (ce 3.9 bal 0.0 smooth 0.1 bn 0.4)  150.5 it/s  19264 img/s  ETA 0:00:00
I1130 02:31:50 train.py:518] task 2/2 main     epoch   3/6  loss 3.0  acc   0.0% (real new-class images, scored over all 100 seen classes)  lr 0.1   1280 img/s  ETA 0:00:26
I1130 02:32:05 train.py:518] task 2/2 finetune epoch   6/6  loss 3.0  acc   0.0% (real new-class images, scored over all 100 seen classes)  lr 0.005   1920 img/s  ETA 0:00:00
peak device memory 1234 MiB
"""


def test_e2e_rates_come_from_the_last_epoch_and_chunk():
  rates = device.e2e_rates(LOG, batch_size=128)
  assert rates == {"ce": 20.0, "distill_main": 10.0, "finetune": 15.0, "inversion": 150.5}
  assert device.peak_device_mib(LOG) == 1234.0
  assert device.images_per_s("  12.5 ms/step (median of 50)    10240.0 images/s  compile") == 10240


def test_projected_seconds():
  counts = {"ce": 200, "distill_main": 100, "finetune": 30, "inversion": 50}
  rates = {"ce": 20.0, "distill_main": 10.0, "finetune": None, "inversion": 5.0}
  assert device.projected_seconds(counts, rates) == pytest.approx(10 + 10 + 3 + 10)
  assert device.projected_seconds(counts, dict(rates, inversion=None)) is None


def test_fake_cifar100_reads_back_balanced(tmp_path):
  archive = fake_cifar100.fake_archive(train_per_class=2, test_per_class=1)
  cifar.write(archive, dataset_name="cifar100", data_dir=tmp_path)
  images, labels = tfds_source.load_split("cifar100", "train", str(tmp_path))
  assert images.shape == (200, 32, 32, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels, minlength=100), np.full(100, 2))


def test_fetched_wheels_pin_the_versions_of_requirements_txt():
  with open(os.path.join(REPO, "requirements.txt")) as f:
    required = dict(line.strip().split("==") for line in f if "==" in line)
  with open(os.path.join(REPO, "bench", "fetch_wheels.sh")) as f:
    pinned = dict(re.findall(r"^  ([A-Za-z0-9._-]+)==(\S+)$", f.read(), re.M))
  for name in ("ml-collections", "tensorflow-datasets", "array-record", "tensorboardX"):
    assert pinned[name] == required[name], name


def test_cpu_tiny_mode_prints_every_line(tmp_path):
  """bench/device.sh --cpu-tiny end to end (~2.7 min on the idle 2-core CPU: 8 compiles of
  ResNet-32 steps): every stage's lines, the files, the results JSON."""
  env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "out"))
  proc = subprocess.run(["bash", "bench/device.sh", "--cpu-tiny"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900, check=False)
  out = proc.stdout
  assert proc.returncode == 0, out + proc.stderr
  for pattern in (r"^# jax devices cpu", r"^rfd_step_f32 jax=[0-9.]+ torch=\S+ ratio=\S+$",
                  r"^inversion_iter_f32 jax=[0-9.]+ torch=\S+ ratio=\S+$",
                  r"^peak_device_memory rfd_step_f32 jax=n/a",
                  r"^e2e_2task ok wall=[0-9.]+s .*train_steps=18 inversion_its=4",
                  r"^e2e_rates ce=[0-9.]+ distill_main=[0-9.]+ finetune=[0-9.]+ inversion=[0-9.]+",
                  r"^peak_device_memory e2e_2task jax=n/a",
                  r"^paper_schedule cifar100 10 tasks: train_steps=76440 .* inversion_its=45000",
                  r"^group N=1 step=distill img/s=[0-9]+ .*speedup=1.00$",
                  r"^group N=5 step=distill img/s=[0-9]+ .*speedup=[0-9.]+$",
                  r"^group_cost 5 runs = [0-9.]+ x one run's time; goal < 2: (yes|no)$",
                  r"^projection e2e [0-9.]+ min", r"^projection bench_f32 [0-9.]+ min",
                  r"^# device.sh done in \d+ s \(exit status 0\)"):
    assert re.search(pattern, out, re.M), (pattern, out)
  files = sorted(os.listdir(tmp_path / "out"))
  assert files == ["device.txt", "device_results.json", "device_stages.txt",
                   "device_summary.txt"]
  with open(tmp_path / "out" / "device_results.json") as f:
    results = json.load(f)
  assert results["e2e"]["ok"] and results["bench"]["rfd_step_f32"]["jax_images_per_s"] > 0
