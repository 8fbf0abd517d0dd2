"""PNG figures: pixel sizes, and the lower-triangular shape of the accuracy-matrix heatmap."""

import numpy as np
from PIL import Image
import pytest

from rfd_jax.jobs import plots


@pytest.mark.parametrize("num, size", [(64, (800, 840)), (5, (500, 140)), (10, (800, 240))])
def test_image_grid_size(tmp_path, num, size):
  path = str(tmp_path / "grid.png")
  images = np.random.default_rng(0).normal(size=(num, 16, 16, 3)).astype(np.float32)
  plots.save_image_grid(path, images, list(range(num)), mean=np.full(3, 0.2), std=np.full(3, 0.3),
                        title="task 1")
  assert Image.open(path).size == size


def test_denormalize_inverts_normalize_and_clips():
  x = np.array([[[[0.5, 0.25, 0.0]]]], np.float32)
  mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.4, 0.1])
  np.testing.assert_allclose(plots.denormalize((x - mean) / std, mean, std), x, atol=1e-6)
  np.testing.assert_array_equal(plots.denormalize(np.full((1, 1, 1, 3), 99.0), mean, std), 1.0)


def test_accuracy_matrix_heatmap_is_lower_triangular(tmp_path):
  path = str(tmp_path / "m.png")
  plots.save_accuracy_matrix(path, [[100.0, None, None], [100.0, 100.0, None],
                                    [100.0, 100.0, 100.0]])
  pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
  assert pixels.shape == (480, 640, 3)
  # viridis at 100% is yellow (253, 231, 37); the colorbar, the second run of yellow columns from
  # the left, is cut off
  yellow = np.abs(pixels - [253, 231, 37]).sum(-1) < 30
  columns = np.flatnonzero(yellow.any(axis=0))
  gaps = np.flatnonzero(np.diff(columns) > 1)
  yellow = yellow[:, :columns[gaps[0]] + 1]
  ys, xs = np.nonzero(yellow)
  cells = np.zeros((3, 3))
  h, w = (ys.max() + 1 - ys.min()) / 3, (xs.max() + 1 - xs.min()) / 3
  for t in range(3):
    for j in range(3):
      cells[t, j] = yellow[int(ys.min() + t * h):int(ys.min() + (t + 1) * h),
                           int(xs.min() + j * w):int(xs.min() + (j + 1) * w)].mean()
  assert np.all(cells[np.tril_indices(3)] > 0.8), cells  # coloured (but for the annotations)
  assert np.all(cells[np.triu_indices(3, 1)] < 0.05), cells  # blank above the diagonal (edges)


def test_curve_and_run_plot_sizes(tmp_path):
  results = {"acc_matrix": [[90.0, None], [60.0, 80.0]], "acc_seen": [90.0, 70.0],
             "task_sizes": [5, 5]}
  plots.save_run_plots(str(tmp_path), results)
  assert Image.open(tmp_path / "accuracy_matrix.png").size == (640, 480)
  assert Image.open(tmp_path / "accuracy_curve.png").size == (640, 480)


def test_replay_title_numbers_tasks_from_1_and_names_missing_classes():
  title = plots.replay_title(1, 5, [3, 7], [3, 3, 7, 7])
  assert title.startswith("task 2/5: synthetic replay of old classes (3, 7)") and "\n" not in title
  title = plots.replay_title(2, 5, [3, 7, 9, 1], [3, 3, 7, 7])
  assert title.splitlines()[1] == "no image of classes 1, 9 among these 4"
  assert plots.replay_title(2, 5, [3, 7, 9], [3]).splitlines()[1].startswith("no image of classes")
  assert "no image of class 9 " in plots.replay_title(2, 5, [3, 9], [3])


def test_curve_labels_fit_inside_the_png(tmp_path):
  """The two-line task ticks and the x-axis label below them are drawn, not cut off."""
  path = str(tmp_path / "curve.png")
  plots.save_accuracy_curve(path, [99.0, 70.0, 60.0, 50.0, 45.0], [2, 4, 6, 8, 10])
  ink = np.asarray(Image.open(path).convert("L")) < 128  # text and lines
  assert ink.shape == (480, 640)
  assert not ink[-2:].any() and not ink[:, :2].any()  # a blank margin at the borders
  assert ink[-40:].any()  # the x-axis label is in the bottom band
