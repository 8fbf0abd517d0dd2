"""Intervals and paired differences for results over several class orders (numpy and math only).

Class-incremental accuracies swing by several points between class orders, while the difference
between two methods on the same order is often steady; so next to the mean ± sample std per label,
the summaries give a 95% Student-t interval of the mean, and the per-order differences of each label
to a reference label with their own interval and a count of the orders where the label is higher,
equal or lower.

The t quantile is computed here (scipy is not a direct dependency): the CDF of Student's t with an
integer number of degrees of freedom has a closed form (Abramowitz & Stegun 26.7.3-4), inverted by
bisection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math

import numpy as np

CONFIDENCE = 0.95
TIE = 0.005  # differences below this are ties: equal at the tables' two decimals


def t_two_sided_mass(t: float, df: int) -> float:
  """P(|T| <= t) for Student's t with `df` >= 1 (an integer) degrees of freedom and t >= 0.

  With theta = atan(t / sqrt(df)), A & S 26.7.3 (df odd) and 26.7.4 (df even):
    odd:  2/pi * (theta + sin(theta) * (cos + 2/3 cos^3 + 2*4/(3*5) cos^5 + ... + cos^(df-2)))
          (the sum is empty for df = 1);
    even: sin(theta) * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ... + cos^(df-2)).
  """
  if df < 1 or int(df) != df:
    raise ValueError(f"degrees of freedom must be a positive integer, got {df}.")
  theta = math.atan2(t, math.sqrt(df))
  cos, sin = math.cos(theta), math.sin(theta)
  if df % 2:
    total, term = 0.0, cos  # term_k = cos^(2k+1) * (2*4*...*2k) / (3*5*...*(2k+1))
    for k in range(1, (df - 1) // 2 + 1):
      total += term
      term *= cos * cos * (2 * k) / (2 * k + 1)
    return 2 / math.pi * (theta + sin * total)
  total, term = 0.0, 1.0  # term_k = cos^(2k) * (1*3*...*(2k-1)) / (2*4*...*2k)
  for k in range(1, df // 2 + 1):
    total += term
    term *= cos * cos * (2 * k - 1) / (2 * k)
  return sin * total


def t_quantile(probability: float, df: int) -> float:
  """The `probability` quantile of Student's t with `df` (integer) degrees of freedom, for
  0.5 <= probability < 1; e.g. t_quantile(0.975, 4) = 2.7764 (the 95% two-sided value)."""
  if not 0.5 <= probability < 1:
    raise ValueError(f"probability must be in [0.5, 1), got {probability}.")
  mass = 2 * probability - 1  # P(|T| <= q)
  low, high = 0.0, 1.0
  while t_two_sided_mass(high, df) < mass:
    high *= 2
  for _ in range(200):
    mid = (low + high) / 2
    if t_two_sided_mass(mid, df) < mass:
      low = mid
    else:
      high = mid
    if high - low <= 1e-13 * high:
      break
  return (low + high) / 2


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Mean of n values, their sample std and the half width of the 95% Student-t interval of the
  mean, t(0.975, n - 1) * std / sqrt(n) (std and half width None for a single value)."""
  mean: float
  std: float | None
  half_width: float | None
  n: int

  @property
  def interval(self) -> tuple[float, float] | None:
    if self.half_width is None:
      return None
    return self.mean - self.half_width, self.mean + self.half_width


def estimate(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
  """The Estimate of `values` (n >= 1 floats)."""
  values = np.asarray(values, np.float64)
  if values.size == 0:
    raise ValueError("estimate of no values.")
  mean = float(values.mean())
  if values.size == 1:
    return Estimate(mean, None, None, 1)
  std = float(values.std(ddof=1))
  half = t_quantile(0.5 + confidence / 2, values.size - 1) * std / math.sqrt(values.size)
  return Estimate(mean, std, half, int(values.size))


@dataclasses.dataclass(frozen=True)
class Paired:
  """A label against the reference on the class orders both ran.

  Attributes:
    keys: the shared runs' keys (e.g. class order names), in the reference's order.
    differences: label − reference for each key (same length as keys).
    estimate: Estimate of the differences (None when no key is shared).
    higher, equal, lower: counts of keys where the label is above, within TIE of, below the
      reference.
    only_reference, only_label: keys that one of the two ran and the other did not.
  """
  keys: tuple[str, ...]
  differences: tuple[float, ...]
  estimate: Estimate | None
  higher: int
  equal: int
  lower: int
  only_reference: tuple[str, ...]
  only_label: tuple[str, ...]


def paired(reference: Mapping[str, float], label: Mapping[str, float]) -> Paired:
  """Per-key differences label − reference over the keys both have (key: a run's class order and
  seed), their Estimate and the higher / equal / lower counts."""
  keys = tuple(k for k in reference if k in label)
  differences = tuple(float(label[k]) - float(reference[k]) for k in keys)
  return Paired(
      keys=keys, differences=differences,
      estimate=estimate(differences) if keys else None,
      higher=sum(d >= TIE for d in differences),
      equal=sum(abs(d) < TIE for d in differences),
      lower=sum(d <= -TIE for d in differences),
      only_reference=tuple(k for k in reference if k not in label),
      only_label=tuple(k for k in label if k not in reference))
