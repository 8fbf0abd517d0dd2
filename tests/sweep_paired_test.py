"""rfd_jax.tools.sweep with many class orders: seed ranges and explicit orders in --orders, and the
summaries' intervals and paired section (--reference). Launches are faked; no training."""

import csv
import os
import sys

from PIL import Image
import pytest

from rfd_jax.tools import sweep
from sweep_test import fake_results, write_results

EXPLICIT = "1.0.3.2.5.4.7.6.9.8"


def test_ranges_and_an_explicit_order_in_a_dry_run(tmp_path, capsys):
  workdir = str(tmp_path / "sw")
  assert sweep.main(["--config", "configs/digits.py", "--workdir", workdir, "--dry_run",
                     "--orders", "seed3-seed4,[1,0,3,2,5,4,7,6,9,8]", "--methods", "abd"]) == 0
  commands = capsys.readouterr().out.splitlines()
  assert commands == [
      f"{sys.executable} -m rfd_jax.main --config configs/digits.py --workdir {workdir}/abd/{o} "
      f"--config.method=abd --config.data.class_order={o} --config.seed=0"
      for o in ("seed3", "seed4", EXPLICIT)]


def test_an_explicit_order_runs_and_is_summarized_under_its_name(tmp_path, monkeypatch, capsys):
  workdir = str(tmp_path / "sw")

  def fake_launch(run, config, common, env=None):
    del config, common, env
    assert run.order == EXPLICIT
    write_results(run.workdir, fake_results("abd", EXPLICIT, 0, 61.0, 80.0, 10.0))
    return 0, 1.0

  monkeypatch.setattr(sweep, "launch", fake_launch)
  assert sweep.main(["--config", "configs/digits.py", "--workdir", workdir,
                     "--orders", f"[{EXPLICIT.replace('.', ',')}]", "--methods", "abd"]) == 0
  assert os.path.isfile(os.path.join(workdir, "abd", EXPLICIT, "results.json"))
  capsys.readouterr()
  assert sweep.main(["--workdir", workdir, "--summarize_only"]) == 0  # found by its directory
  with open(os.path.join(workdir, "summary.md")) as f:
    assert f"| `abd` | {EXPLICIT} | 0 | 99.00 / 61.00 |" in f.read()


@pytest.mark.parametrize("orders, message", [
    ("seed4-seed2", "error: --orders: the range 'seed4-seed2' runs backwards; write seed2-seed4."),
    ("seed0,1,0", "error: --orders: '1' is not a class order (an explicit order goes in brackets"),
    ("[0,1,1]", "error: --orders: '[0,1,1]' is not a permutation of 0..n-1"),
    ("seed03", "error: --orders: 'seed03' is not a class order (write seed3)"),
])
def test_bad_orders_exit_2_with_one_error_line_and_nothing_written(tmp_path, capsys, orders,
                                                                    message):
  workdir = tmp_path / "sw"
  assert sweep.main(["--config", "configs/digits.py", "--workdir", str(workdir), "--methods",
                     "abd", "--orders", orders]) == 2
  captured = capsys.readouterr()
  errors = captured.err.splitlines()
  assert len(errors) == 1 and errors[0].startswith(message), errors
  assert not captured.out and not workdir.exists()


# label → order → final accuracy; avg. incremental accuracy is final + 20 (+ 1 for abd on seed1).
FINALS = {"rfd": {"seed0": 43.0, "seed1": 57.5, "seed2": 53.5},
          "abd": {"seed0": 46.0, "seed1": 57.5, "seed2": 54.0},
          "rdfcil": {"seed0": 42.0, "seed2": 51.0}}  # rdfcil misses seed1


def _sweep_with_runs(tmp_path):
  workdir = str(tmp_path / "sw")
  for label, finals in FINALS.items():
    for order, final in finals.items():
      avg = final + 20 + (1.0 if (label, order) == ("abd", "seed1") else 0.0)
      write_results(os.path.join(workdir, label, order),
                    fake_results(label, order, 0, final, avg, 30.0))
  return workdir


def test_summary_intervals_and_paired_section_by_hand(tmp_path, capsys):
  workdir = _sweep_with_runs(tmp_path)
  assert sweep.main(["--workdir", workdir, "--methods", "rfd,abd,rdfcil", "--orders",
                     "seed0-seed2", "--summarize_only", "--reference", "rfd"]) == 0
  with open(os.path.join(workdir, "summary.md")) as f:
    markdown = f.read()
  # rfd: 43, 57.5, 53.5: mean 51.33, sd 7.4889, t(0.975, 2) 4.302653 → ± 18.6036
  assert ("| `rfd` |  | seed0, seed1, seed2 | 0 | 51.33 ± 7.49 | [32.73, 69.94] | 71.33 ± 7.49 "
          "| [52.73, 89.94] | 30.00 ± 0.00 |") in markdown
  # rdfcil: 42, 51: mean 46.5, sd 6.364, t(0.975, 1) 12.7062 → ± 57.18
  assert "| `rdfcil` |  | seed0, seed2 (2/3 runs) | 0 | 46.50 ± 6.36 | [-10.68, 103.68] |" in markdown
  # abd − rfd: +3, 0, +0.5, mean 1.1667, sd 1.6073, ± 3.9928; avg. inc. +3, +1, +0.5: 1.5 ± 3.2863
  assert ("| `abd` − `rfd` | seed0, seed1, seed2 | +3.00 / +0.00 / +0.50 | +1.17 ± 1.61 | "
          "[-2.83, +5.16] | 2 / 1 / 0 | +1.50 ± 1.32 | [-1.79, +4.79] |") in markdown
  # rdfcil − rfd on seed0 and seed2 only: -1, -2.5; mean -1.75, sd 1.0607, ± 9.53
  assert ("| `rdfcil` − `rfd` | seed0, seed2 (no `rdfcil` run: seed1) | -1.00 / -2.50 | "
          "-1.75 ± 1.06 | [-11.28, +7.78] | 0 / 0 / 2 |") in markdown
  assert "- `abd` − `rfd`: +1.17 ± 1.61 [-2.83, +5.16], higher on 2 of 3 orders." in markdown
  assert ("- `rdfcil` − `rfd`: -1.75 ± 1.06 [-11.28, +7.78], higher on 0 of 2 orders, lower on "
          "2.") in markdown
  assert markdown.index("Paired differences to `rfd`") < markdown.index("Per run: A_t")
  with open(os.path.join(workdir, "paired.csv")) as f:
    rows = {(r["label"], r["metric"]): r for r in csv.DictReader(f)}
  assert set(rows) == {(l, m) for l in ("abd", "rdfcil") for m in ("final_acc", "avg_inc_acc")}
  rdfcil = rows["rdfcil", "final_acc"]
  assert rdfcil["keys"] == "seed0 seed2" and rdfcil["only_reference"] == "seed1"
  assert float(rdfcil["mean"]) == pytest.approx(-1.75)
  assert float(rdfcil["ci_high"]) == pytest.approx(-1.75 + 12.706205 * 1.06066 / 2 ** 0.5,
                                                   rel=1e-5)
  with open(os.path.join(workdir, "summary.csv")) as f:
    rfd = next(r for r in csv.DictReader(f) if r["label"] == "rfd")
  assert float(rfd["final_acc_ci_low"]) == pytest.approx(51.3333 - 18.6036, abs=1e-3)
  assert Image.open(os.path.join(workdir, "per_order.png")).size == (960, 480)
  assert "paired.csv, comparison.png, per_order.png" in capsys.readouterr().out


def test_without_a_reference_no_paired_section(tmp_path):
  workdir = _sweep_with_runs(tmp_path)
  assert sweep.main(["--workdir", workdir, "--summarize_only"]) == 0
  with open(os.path.join(workdir, "summary.md")) as f:
    assert "Paired differences" not in f.read()
  assert not os.path.exists(os.path.join(workdir, "paired.csv"))
  assert os.path.isfile(os.path.join(workdir, "per_order.png"))


def test_a_reference_that_is_not_a_label_exits_2_writing_nothing(tmp_path, capsys):
  workdir = _sweep_with_runs(tmp_path)
  assert sweep.main(["--workdir", workdir, "--summarize_only", "--reference", "rfd2"]) == 2
  err = capsys.readouterr().err.splitlines()
  assert err == ["error: --reference rfd2: not a label of the sweep (abd, rdfcil, rfd)."]
  assert not os.path.exists(os.path.join(workdir, "summary.md"))


def test_one_sweep_per_order_keeps_every_command_for_the_table(tmp_path, monkeypatch):
  workdir = str(tmp_path / "sw")

  def fake_launch(run, config, common, env=None):
    del config, common, env
    write_results(run.workdir, fake_results("abd", run.order, 0, 60.0, 80.0, 10.0))
    return 0, 1.0

  monkeypatch.setattr(sweep, "launch", fake_launch)
  first = ["--config", "configs/digits.py", "--workdir", workdir, "--methods", "abd", "--orders"]
  for orders in ("seed0", "seed1", "seed0"):  # the repeat adds no line
    assert sweep.main(first + [orders]) == 0
  assert sweep.main(["--workdir", workdir, "--summarize_only"]) == 0
  with open(os.path.join(workdir, "summary.md")) as f:
    block = f.read().split("```")[1].strip().splitlines()
  prefix = f"python -m rfd_jax.tools.sweep {' '.join(first)}"
  assert block == [f"{prefix} seed0", f"{prefix} seed1",
                   f"python -m rfd_jax.tools.sweep --workdir {workdir} --summarize_only"]
