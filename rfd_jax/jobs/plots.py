"""PNG figures of a run: synthetic replay grids, the accuracy matrix, A_t curves.

matplotlib's object-oriented API on the Agg canvas (no pyplot, no display). Every figure has a
fixed size in pixels (figsize × DPI, no tight bounding box), so outputs are comparable across runs;
the charts use constrained layout so that their labels fit inside that size. Tasks are numbered
from 1 in titles, axes and file names, as in the logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

DPI = 100
CELL_INCHES = 1.0  # one synthetic image per inch of the grid: 100 × 100 px


def save_figure(fig: Figure, path: str) -> None:
  """Writes `fig` as a PNG at `path` (atomically: a viewer never sees a half-written file)."""
  FigureCanvasAgg(fig)
  tmp = f"{path}.tmp.png"
  fig.savefig(tmp, dpi=DPI)
  os.replace(tmp, path)  # a viewer never sees a half-written file


def denormalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """Normalised float (N, H, W, 3) → displayable float (N, H, W, 3) in [0, 1]: x·std + mean."""
  return np.clip(np.asarray(images, np.float32) * np.asarray(std) + np.asarray(mean), 0.0, 1.0)


def grid_shape(num: int, max_cols: int = 8) -> tuple[int, int]:
  """(rows, cols) of a grid of `num` images at most `max_cols` wide."""
  cols = min(num, max_cols)
  return -(-num // cols), cols


def save_image_grid(path: str, images: np.ndarray, labels: Sequence[int], *, mean: np.ndarray,
                    std: np.ndarray, title: str = "", max_cols: int = 8) -> None:
  """A grid of normalised images (N, H, W, 3), each captioned with its label above it.

  The PNG is cols × 100 px wide and rows × 100 + 40 px high (a title band on top). The grid is
  one mosaic image (one axes: 64 subplots take seconds to draw).
  """
  images = denormalize(images, mean, std)
  num, size = len(images), images.shape[1]
  rows, cols = grid_shape(num, max_cols)
  caption = max(size // 4, 3)  # image pixels above each image; as many to its right
  cell_h = cell_w = size + caption  # square cells keep the pixels square
  mosaic = np.ones((rows * cell_h, cols * cell_w, 3), np.float32)
  for i in range(num):
    r, c = divmod(i, cols)
    mosaic[r * cell_h + caption:(r + 1) * cell_h, c * cell_w:c * cell_w + size] = images[i]
  title_inches = 0.4
  height = rows * CELL_INCHES + title_inches
  fig = Figure(figsize=(cols * CELL_INCHES, height))
  ax = fig.add_axes((0, 0, 1, 1 - title_inches / height))
  ax.imshow(mosaic, interpolation="nearest", aspect="auto")
  ax.set_axis_off()
  for i in range(num):
    r, c = divmod(i, cols)
    ax.text(c * cell_w + size / 2, r * cell_h + caption / 2 - 0.5, str(labels[i]), fontsize=8,
            ha="center", va="center")
  if title:
    fig.suptitle(title, fontsize=9, y=1 - 0.1 * title_inches / height, va="top")
  save_figure(fig, path)


def save_synthetic_grid(path: str, gen_vars, teacher_vars, rng, *, generator, teacher, spec,
                        task: int, mean: np.ndarray, std: np.ndarray, write: bool = True,
                        num_images: int = 64) -> None:
  """The replay of task `task` (t >= 1) as a grid: `num_images` images from the generator, sorted
  and captioned by the teacher's label as an original class id (spec.class_order maps model
  labels to class ids). The title numbers the task from 1 (as the logs) and names the old classes
  that have no image among those shown. Every process samples, as the variables may be global
  arrays spanning processes; only the one with `write` (process 0) saves."""
  # Imported here: the other figures (report, sweep) need no JAX.
  import jax  # pylint: disable=g-import-not-at-top
  from rfd_jax.methods import inversion  # pylint: disable=g-import-not-at-top
  num_old = int(spec.offsets[task])
  images, labels = inversion.labelled_samples(gen_vars, teacher_vars, rng,
                                              jax.numpy.int32(num_old), generator=generator,
                                              teacher=teacher, batch_size=num_images)
  if not write:
    return
  labels = np.asarray(labels)
  by_label = np.argsort(labels, kind="stable")  # same-label images side by side
  images, class_ids = np.asarray(images)[by_label], np.asarray(spec.class_order)[labels][by_label]
  old = sorted(spec.class_order[:num_old])
  save_image_grid(path, images, class_ids.tolist(), mean=mean, std=std,
                  title=replay_title(task, spec.num_tasks, old, class_ids.tolist()))


def _classes_text(classes: Sequence[int], limit: int = 12) -> str:
  return ", ".join(map(str, classes)) if len(classes) <= limit else f"{len(classes)} classes"


def replay_title(task: int, num_tasks: int, old_classes: Sequence[int],
                 shown_labels: Sequence[int]) -> str:
  """The title of task `task`'s (0-based) replay grid: the task from 1, the old classes, and on a
  second line those of them without an image among `shown_labels` (the teacher may never predict
  a class, or a small sample may miss it)."""
  title = (f"task {task + 1}/{num_tasks}: synthetic replay of old classes "
           f"({_classes_text(old_classes)}), captioned with the teacher's labels")
  missing = sorted(set(old_classes) - set(shown_labels))
  if missing:
    title += (f"\nno image of {'class' if len(missing) == 1 else 'classes'} "
              f"{_classes_text(missing)} among these {len(shown_labels)}")
  return title


def save_accuracy_matrix(path: str, acc_matrix: Sequence[Sequence[float | None]]) -> None:
  """Heatmap of a[t][j] (after training task t, accuracy on task j's classes), values annotated;
  entries above the diagonal (None) are blank. 6.4 × 4.8 in at 100 DPI: 640 × 480 px."""
  matrix = np.array([[np.nan if v is None else v for v in row] for row in acc_matrix], np.float64)
  num = len(matrix)
  fig = Figure(figsize=(6.4, 4.8), layout="constrained")
  ax = fig.subplots()
  image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=0, vmax=100)
  fig.colorbar(image, ax=ax, label="accuracy (%)")
  if num <= 20:  # annotations become unreadable beyond that
    for t in range(num):
      for j in range(num):
        if np.isfinite(matrix[t, j]):
          ax.text(j, t, f"{matrix[t, j]:.0f}" if num > 10 else f"{matrix[t, j]:.1f}",
                  ha="center", va="center", fontsize=8,
                  color="black" if matrix[t, j] > 60 else "white")
  ticks = np.arange(num) if num <= 20 else np.arange(0, num, max(num // 10, 1))
  ax.set_xticks(ticks, [str(t + 1) for t in ticks])  # tasks from 1, as in the logs
  ax.set_yticks(ticks, [str(t + 1) for t in ticks])
  ax.set_xlabel("evaluated on task j")
  ax.set_ylabel("after training task t")
  ax.set_title("accuracy matrix a[t, j] (%)")
  save_figure(fig, path)


def save_accuracy_curve(path: str, acc_seen: Sequence[float],
                        classes_seen: Sequence[int] | None = None) -> None:
  """A_t (accuracy over all classes seen after task t) against t. 640 × 480 px."""
  fig = Figure(figsize=(6.4, 4.8), layout="constrained")
  ax = fig.subplots()
  tasks = np.arange(len(acc_seen))
  ax.plot(tasks, acc_seen, marker="o")
  task_axis(ax, len(acc_seen), classes_seen)
  ax.set_ylabel("A_t: accuracy on all seen classes (%)")
  ax.set_title(f"final {acc_seen[-1]:.2f}%, average incremental {np.mean(acc_seen):.2f}%")
  save_figure(fig, path)


def task_axis(ax, num_tasks: int, classes_seen: Sequence[int] | None) -> None:
  """The x axis of a per-task chart: tasks from 1 (with the classes seen), y from 0 to 101 %."""
  labels = [str(t + 1) for t in range(num_tasks)]  # tasks from 1, as in the logs
  if classes_seen is not None and num_tasks <= 20:
    labels = [f"{t + 1}\n({c})" for t, c in zip(range(num_tasks), classes_seen)]
    ax.set_xlabel("after task t (classes seen)")
  else:
    ax.set_xlabel("after task t")
  ax.set_xticks(np.arange(num_tasks), labels)
  ax.set_ylim(0, 101)
  ax.grid(alpha=0.3)


def save_run_plots(workdir: str, results: Mapping) -> None:
  """accuracy_matrix.png and accuracy_curve.png of a finished run (results.json content)."""
  save_accuracy_matrix(os.path.join(workdir, "accuracy_matrix.png"), results["acc_matrix"])
  save_accuracy_curve(os.path.join(workdir, "accuracy_curve.png"), results["acc_seen"],
                      np.cumsum(results["task_sizes"]).tolist())
