"""rfd_jax.tools.comparisons: the Student-t quantile, intervals and paired differences, against
published t tables and hand computations."""

import math
import random

import pytest

from rfd_jax.tools import comparisons


@pytest.mark.parametrize("probability, df, expected", [
    # t tables (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2), to the digits printed there.
    (0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 3, 3.182), (0.975, 4, 2.776),
    (0.975, 9, 2.262), (0.975, 29, 2.045), (0.975, 100, 1.984), (0.95, 5, 2.015),
    (0.995, 10, 3.169), (0.9, 1, 3.078)])
def test_t_quantile_matches_the_t_table(probability, df, expected):
  assert comparisons.t_quantile(probability, df) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_closed_forms_and_limits():
  # df = 1 is the Cauchy distribution: q = tan(pi (p - 1/2)); df = 2: q = (2p-1) sqrt(2 / (1 - (2p-1)^2)).
  for p in (0.6, 0.9, 0.975, 0.999):
    assert comparisons.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
    a = 2 * p - 1
    assert comparisons.t_quantile(p, 2) == pytest.approx(a * math.sqrt(2 / (1 - a * a)), rel=1e-10)
  assert comparisons.t_quantile(0.975, 1000) == pytest.approx(1.962339, abs=1e-6)  # near the normal 1.959964
  assert comparisons.t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-12)
  for bad in ((0.975, 0), (0.975, 2.5), (1.0, 3), (0.2, 3)):
    with pytest.raises(ValueError):
      comparisons.t_quantile(*bad)


def test_t_mass_is_a_cdf_that_sampling_agrees_with():
  rng = random.Random(0)
  df, q = 4, comparisons.t_quantile(0.9, 4)
  samples = [rng.gauss(0, 1) / math.sqrt(sum(rng.gauss(0, 1) ** 2 for _ in range(df)) / df)
             for _ in range(20000)]
  assert sum(abs(s) <= q for s in samples) / len(samples) == pytest.approx(0.8, abs=0.01)


def test_estimate_by_hand():
  # 60, 64, 65: mean 63, deviations -3, 1, 2, sd = sqrt(14 / 2) = sqrt(7); t(0.975, 2) = 4.302653.
  est = comparisons.estimate([60.0, 64.0, 65.0])
  assert (est.mean, est.n) == (63.0, 3)
  assert est.std == pytest.approx(math.sqrt(7))
  assert est.half_width == pytest.approx(4.302653 * math.sqrt(7) / math.sqrt(3), rel=1e-6)
  assert est.interval == pytest.approx((63 - 6.572411, 63 + 6.572411), abs=1e-5)
  single = comparisons.estimate([42.0])
  assert (single.mean, single.std, single.half_width, single.interval) == (42.0, None, None, None)


def test_paired_differences_with_a_label_that_misses_an_order():
  reference = {"seed0": 43.0, "seed1": 57.5, "seed2": 53.5, "seed3": 50.0}
  label = {"seed0": 46.0, "seed2": 54.0, "seed1": 57.5, "seed9": 10.0}  # no seed3, an extra seed9
  pair = comparisons.paired(reference, label)
  assert pair.keys == ("seed0", "seed1", "seed2")  # the reference's order
  assert pair.differences == (3.0, 0.0, 0.5)
  assert (pair.higher, pair.equal, pair.lower) == (2, 1, 0)
  assert pair.only_reference == ("seed3",) and pair.only_label == ("seed9",)
  # mean 3.5 / 3, sd of (3, 0, 0.5): deviations 1.8333, -1.1667, -0.6667 → var 2.5833
  assert pair.estimate.mean == pytest.approx(3.5 / 3)
  assert pair.estimate.std == pytest.approx(math.sqrt((1.8333333**2 + 1.1666667**2
                                                       + 0.6666667**2) / 2), rel=1e-6)
  assert pair.estimate.half_width == pytest.approx(
      4.302653 * pair.estimate.std / math.sqrt(3), rel=1e-6)
  none = comparisons.paired(reference, {"seed7": 1.0})
  assert none.keys == () and none.estimate is None and none.higher == none.lower == 0
