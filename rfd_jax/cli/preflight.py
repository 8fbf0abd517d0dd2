"""Everything that can be checked before a run creates or writes anything.

`check(config, workdir)` validates the config of its job, then the workdir (usable as an output
directory), the data (present; digits reads no `data_dir`), that the batch fits the smallest task
(or the training set), `config.init_from` (a readable checkpoint of a compatible config) and the
dfkd teacher (a finished teacher run that matches), and that a resume from the workdir's
checkpoints would not be refused for a config that differs from theirs. Each failure raises
`errors.ConfigError` (FileNotFoundError for missing data) with a message that names the
problem and the fix; main.py prints it as one `error:` line and exits with status 2. Nothing here
writes to the workdir, so a failed check leaves no trace of the run.
"""

from __future__ import annotations

import json
import os

import numpy as np

from rfd_jax.engine import checkpointing, errors, saved_config
from rfd_jax.cli import config_validation
from rfd_jax.methods import tasks
from rfd_jax.data import datasets, sklearn_digits

ConfigError = errors.ConfigError


def check(config, workdir: str) -> str:
  """Runs every check for the job of `config` (see the module docstring); returns the job."""
  job = config_validation.job_of(config)
  config_validation.check_removed_fields(config)
  if job == "dfcil":
    spec = config_validation.validate(config)
  elif job == "teacher":
    from rfd_jax.jobs import (teacher)  # pylint: disable=g-import-not-at-top  (only the jobs that run)
    teacher.validate(config)
  else:
    from rfd_jax.jobs import dfkd  # pylint: disable=g-import-not-at-top
    dfkd.validate(config)
  check_workdir(workdir)
  counts = train_class_counts(config.data)
  check_resume(config, workdir, job)
  if job == "dfcil":
    check_batch_fits_tasks(config, spec, counts)
    check_init_from(config, workdir)
  elif job == "teacher":
    if counts is not None and config.data.batch_size > counts.sum():
      raise ConfigError(f"config.data.batch_size={config.data.batch_size} exceeds the "
                        f"{counts.sum()} training images of {config.data.dataset}; lower it.")
  else:
    from rfd_jax.jobs import teacher  # pylint: disable=g-import-not-at-top
    teacher.check_teacher_checkpoint(config.teacher_ckpt, model_name=config.teacher_model,
                                     dataset=config.data.dataset,
                                     image_size=config.data.image_size)
  return job


def check_workdir(workdir: str) -> None:
  """ConfigError unless `workdir` is a writable directory or can be created as one."""
  path = os.path.abspath(workdir)
  if os.path.lexists(path):
    if not os.path.isdir(path):
      kind = "a regular file" if os.path.isfile(path) else "not a directory"
      raise ConfigError(f"--workdir {workdir} is {kind}; pass a directory (created if missing).")
    if not os.access(path, os.W_OK | os.X_OK):
      raise ConfigError(f"--workdir {workdir} is not writable; pass a directory you can write to.")
    return
  parent = os.path.dirname(path)
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ConfigError(f"--workdir {workdir} cannot be created: {parent} is not a directory; "
                      "pass another --workdir.")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ConfigError(f"--workdir {workdir} cannot be created: {parent} is not writable; pass "
                      "another --workdir.")


def _digits_train_labels() -> np.ndarray:
  """The labels of sklearn_digits.load_digits's training split, without building its images
  (the stratified split depends only on the labels, the sizes and the seed)."""
  from sklearn import datasets as sklearn_datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  labels = sklearn_datasets.load_digits().target.astype(np.int64)
  train, _ = model_selection.train_test_split(
      np.arange(len(labels)), test_size=sklearn_digits.DIGITS_TEST_FRACTION, stratify=labels,
      random_state=sklearn_digits.DIGITS_SPLIT_SEED)
  return labels[train]


def _tfds_train_counts(name: str, data_dir: str, num_classes: int) -> np.ndarray | None:
  """Per-class training images of prepared TFDS data, after checking both splits are prepared
  (PreparedDataNotFoundError otherwise). The TFDS datasets used here have balanced classes, so the
  split size recorded in dataset_info.json (shardLengths) gives them without reading any record;
  None when it is not recorded."""
  from rfd_jax.data import tfds_source  # pylint: disable=g-import-not-at-top  (imports tfds)
  try:
    dataset_dir = tfds_source.check_prepared(name, "train", data_dir=data_dir or None)
    tfds_source.check_prepared(name, "test", data_dir=data_dir or None)
  except ValueError as e:  # an unsupported dataset or split; a missing one raises FileNotFoundError
    raise ConfigError(str(e)) from None
  info = json.loads((dataset_dir / tfds_source.DATASET_INFO_FILENAME).read_text())
  lengths = [split.get("shardLengths") for split in info.get("splits", [])
             if split.get("name") == "train"]
  if not lengths or not lengths[0]:
    return None
  return np.full(num_classes, sum(int(n) for n in lengths[0]) // num_classes, np.int64)


def train_class_counts(data_config) -> np.ndarray | None:
  """Training images per original class id (C,), after checking that the data is there; None
  where they cannot be known without reading the data (the job checks again once loaded).

  Raises:
    ConfigError: data_dir given for digits (which ships with scikit-learn and reads none).
    FileNotFoundError: the data is missing; the message says what to put where.
  """
  name = data_config.dataset
  info = datasets.dataset_info(name)
  if name == "digits":
    if data_config.data_dir:
      raise ConfigError(
          f"config.data.data_dir={data_config.data_dir!r} is not read for digits: digits ships "
          "with scikit-learn; drop --config.data.data_dir, or pick the dataset that lives there "
          "with --config.data.dataset.")
    return np.bincount(_digits_train_labels(), minlength=info.num_classes)
  from rfd_jax.data import image_folders  # pylint: disable=g-import-not-at-top
  if name in image_folders.FOLDER_DATASETS:
    files = {"tiny_imagenet": image_folders.tiny_imagenet_files,
             "imagenet100": image_folders.imagenet100_files,
             "imagenet_r": image_folders.imagenet_r_files}[name]
    try:
      _, labels, _, _ = files(data_config.data_dir)
    except ValueError as e:  # a malformed list or split file
      raise ConfigError(f"config.data.data_dir={data_config.data_dir!r}: {e}") from None
    return np.bincount(labels, minlength=info.num_classes)
  return _tfds_train_counts(name, data_config.data_dir, info.num_classes)


def check_batch_fits_tasks(config, spec: tasks.TaskSpec, counts: np.ndarray | None) -> None:
  """ConfigError if config.data.batch_size exceeds the training images of some task (an epoch
  would have no step). counts: training images per original class id, or None (unknown)."""
  if counts is None:
    return
  from rfd_jax.methods import learners  # pylint: disable=g-import-not-at-top  (its data selection)
  learner = learners.get_learner(config)
  model_labels = np.repeat(np.arange(spec.num_classes), counts[np.asarray(spec.class_order)])
  sizes = [len(learner.train_indices(model_labels, spec.offsets, t))
           for t in range(spec.num_tasks)]
  smallest = int(np.argmin(sizes))
  batch_size = config.data.batch_size
  if batch_size > sizes[smallest]:
    raise ConfigError(
        f"config.data.batch_size={batch_size} exceeds the {sizes[smallest]} training images of "
        f"task {smallest + 1}/{spec.num_tasks} (the smallest task); lower it to at most "
        f"{sizes[smallest]}.")


def _has_checkpoint(workdir: str) -> bool:
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def _newest_readable_meta(directory: str, only_id: int | None = None) -> dict | None:
  """The JSON record of the newest checkpoint in `directory` (or of checkpoint `only_id`) that
  can be read, or None."""
  source = checkpointing.Checkpoints(directory, keep=1, read_only=True)
  try:
    ids = source.all_ids()
    if only_id is not None:
      ids = [only_id] if only_id in ids else []
    for checkpoint_id in reversed(ids):  # newest first, as the restore
      try:
        return source.read_meta(checkpoint_id)
      except Exception:  # pylint: disable=broad-except  (the restore falls back the same way)
        continue
  finally:
    source.close()
  return None


def _check_layout(job: str, meta: dict, source: str) -> None:
  """The class-incremental job's refusal of a checkpoint of an earlier layout."""
  if job == "dfcil":
    from rfd_jax.jobs import dfcil_run  # pylint: disable=g-import-not-at-top  (JAX; only here)
    dfcil_run.check_layout(meta, source)


def check_resume(config, workdir: str, job: str = "dfcil") -> None:
  """When the run will resume from the workdir's newest readable checkpoint: ConfigError
  (ConfigMismatchError) if its config may not be continued with this one, as the resume would
  refuse it, but before anything is logged. (No readable checkpoint: the resume decides.)"""
  if not config.ckpt.get("enabled", True) or not _has_checkpoint(workdir):
    return
  directory = os.path.join(workdir, "checkpoints")
  meta = _newest_readable_meta(directory)
  if meta is None or "config" not in meta:
    return
  if "step" in meta:  # (older ones are refused by the resume, with their own message)
    _check_layout(job, meta, os.path.abspath(directory))
  saved_config.check_config(meta["config"], saved_config.config_dict(config),
                             allow_change=config.ckpt.allow_config_change,
                             source=os.path.abspath(directory))


def check_init_from(config, workdir: str) -> None:
  """When the run will start from `config.init_from` (set, and no checkpoint in the workdir):
  ConfigError unless it holds a readable checkpoint whose config may be continued with this one
  (the rule of a resume, saved_config.check_config)."""
  if not config.init_from or _has_checkpoint(workdir):
    return
  directory, only_id = checkpointing.locate(config.init_from)
  meta = _newest_readable_meta(directory, only_id)
  if meta is None:
    raise ConfigError(f"config.init_from={config.init_from!r} holds no readable checkpoint; "
                      "expected a run's workdir, its checkpoints directory or one checkpoint.")
  if "step" in meta:
    _check_layout("dfcil", meta, config.init_from)
  current = saved_config.config_dict(config)
  saved_config.check_config(meta["config"], current,
                             allow_change=config.ckpt.allow_config_change, source=config.init_from)
