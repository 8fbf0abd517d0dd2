"""One-shot validation of a run config: fail fast with a message that names the field."""

from __future__ import annotations

from rfd_jax.methods import tasks
from rfd_jax.data import datasets, image_folders
from rfd_jax.engine import errors, saved_config
from rfd_jax.jobs import group
from rfd_jax.models import layers

METHODS = ("rfd", "rdfcil", "abd", "deepinversion", "finetune", "joint")
GENERATOR_POLICIES = ("auto", "fresh", "reuse")
MODELS = ("resnet32", "resnet32_he", "resnet18", "resnet_tiny")
HEADS = ("rfd", "linear", "abd")
DTYPES = ("float32", "bfloat16")
INVERSION_KINDS = ("standard", "rgal")
SYN_TRIPLET_DIRECTIONS = ("paper", "released_code")

def _require(condition: bool, message: str) -> None:
  if not condition:
    raise errors.ConfigError(message)


def _field_paths(config, prefix: str = "") -> list[str]:
  paths = []
  for key, value in config.items():
    paths += (_field_paths(value, f"{prefix}{key}.") if hasattr(value, "items")
              else [f"{prefix}{key}"])
  return paths


def check_removed_fields(config) -> None:
  """ConfigError if `config` (e.g. a config file of one's own) still sets a removed field."""
  for path in _field_paths(config):
    _require(path not in saved_config.RENAMED_FIELDS, saved_config.renamed_field_message(path) or "")


def validate(config) -> tasks.TaskSpec:
  """Checks `config` and returns the run's TaskSpec.

  Raises:
    ConfigError: naming the first offending field.
  """
  check_removed_fields(config)
  _require(config.method in METHODS,
           f"config.method={config.method!r} is unknown; expected one of {METHODS}.")
  spec = group.task_spec(config.data)
  info = datasets.dataset_info(config.data.dataset)
  _require(config.dtype in DTYPES,
           f"config.dtype={config.dtype!r} is unknown; expected one of {DTYPES}.")
  _require(config.model.name in MODELS,
           f"config.model.name={config.model.name!r} is unknown; expected one of {MODELS}.")
  _require(config.model.head in HEADS,
           f"config.model.head={config.model.head!r} is unknown; expected one of {HEADS}.")
  data, optim = config.data, config.optim
  _require(data.batch_size >= 1, f"config.data.batch_size={data.batch_size} must be >= 1.")
  _require(data.eval_batch_size >= 1,
           f"config.data.eval_batch_size={data.eval_batch_size} must be >= 1.")
  _require(data.image_size >= 8 and data.image_size % 4 == 0,
           f"config.data.image_size={data.image_size} must be a multiple of 4 and >= 8.")
  if not info.resized:  # digits and the folder datasets resize to any size (tests shrink them)
    _require(data.image_size == info.image_size,
             f"config.data.image_size={data.image_size} must be {info.image_size} for "
             f"{data.dataset} (it is not resized).")
  _require(data.get("decode_threads", 0) >= 0,
           f"config.data.decode_threads={data.get('decode_threads')} must be >= 0 (0: one per "
           "CPU core).")
  _require(data.get("cache_gb", 0.0) >= 0,
           f"config.data.cache_gb={data.get('cache_gb')} must be >= 0.")
  per_class = data.get("train_per_class", 0)
  _require(isinstance(per_class, int) and not isinstance(per_class, bool) and per_class >= 0,
           f"config.data.train_per_class={per_class!r} must be an integer >= 0 (0: all training "
           "images).")
  _require(per_class == 0 or data.dataset not in image_folders.FOLDER_DATASETS,
           f"config.data.train_per_class={per_class} is not supported for the folder dataset "
           f"{data.dataset}; use 0.")
  _require(0 <= data.crop_padding < data.image_size,
           f"config.data.crop_padding={data.crop_padding} must be in [0, image_size).")
  _require(data.crop_fill in ("normalized", "black"),
           f"config.data.crop_fill={data.crop_fill!r}: expected 'normalized' or 'black'.")
  for name in ("color_jitter_brightness", "color_jitter_contrast"):
    _require(data.get(name, 0.0) >= 0,
             f"config.data.{name}={data.get(name)} must be >= 0 (0: off).")
  _require(optim.lr > 0, f"config.optim.lr={optim.lr} must be > 0.")
  _require(optim.ft_lr >= 0, f"config.optim.ft_lr={optim.ft_lr} must be >= 0.")
  _require(0 <= optim.momentum < 1, f"config.optim.momentum={optim.momentum} must be in [0, 1).")
  _require(optim.weight_decay >= 0,
           f"config.optim.weight_decay={optim.weight_decay} must be >= 0.")
  _require(0 <= optim.ft_epochs < optim.epochs,
           f"config.optim.ft_epochs={optim.ft_epochs} must be in [0, config.optim.epochs="
           f"{optim.epochs}): the main phase needs at least one epoch.")
  _require(optim.get("loop", "auto") in ("auto", "scan", "host"),
           f"config.optim.loop={optim.get('loop')!r}: expected 'auto', 'scan' or 'host'.")
  _require(not (optim.get("loop") == "scan" and not data.get("device_resident", True)),
           "config.optim.loop='scan' needs the train set on the device: set "
           "config.data.device_resident=True or config.optim.loop='host'.")
  milestones = list(optim.milestones)
  _require(milestones == sorted(milestones) and all(m > 0 for m in milestones),
           f"config.optim.milestones={tuple(milestones)} must be increasing positive epochs.")
  check_milestones(config)
  _require(0 < optim.lr_decay <= 1, f"config.optim.lr_decay={optim.lr_decay} must be in (0, 1].")
  inv = config.inversion
  _require(inv.iterations >= 1, f"config.inversion.iterations={inv.iterations} must be >= 1.")
  _require(inv.chunk_steps >= 1 and inv.iterations % inv.chunk_steps == 0,
           f"config.inversion.chunk_steps={inv.chunk_steps} must be >= 1 and divide "
           f"config.inversion.iterations={inv.iterations}.")
  _require(inv.batch_size >= 2, f"config.inversion.batch_size={inv.batch_size} must be >= 2 "
           "(batch statistics).")
  _require(inv.lr > 0, f"config.inversion.lr={inv.lr} must be > 0.")
  _require(inv.loop in ("auto", "scan", "host"),
           f"config.inversion.loop={inv.loop!r}: expected 'auto', 'scan' or 'host'.")
  _require(inv.get("upsample", "auto") in layers.UPSAMPLE_CHOICES,
           f"config.inversion.upsample={inv.get('upsample')!r}: expected 'auto', 'phases' or "
           "'repeat'.")
  _require(inv.generator in GENERATOR_POLICIES,
           f"config.inversion.generator={inv.generator!r}: expected one of {GENERATOR_POLICIES}.")
  for name in ("ce_weight", "balance_weight", "smoothness_weight", "bn_weight"):
    _require(inv[name] >= 0, f"config.inversion.{name}={inv[name]} must be >= 0.")
  _require(inv.kind in INVERSION_KINDS,
           f"config.inversion.kind={inv.kind!r} is unknown; expected one of {INVERSION_KINDS}.")
  rgal = config.rgal
  _require(rgal.syn_triplet_direction in SYN_TRIPLET_DIRECTIONS,
           f"config.rgal.syn_triplet_direction={rgal.syn_triplet_direction!r}: expected one of "
           f"{SYN_TRIPLET_DIRECTIONS}.")
  for name in ("triplet", "striplet"):
    _require(rgal[name] >= 0, f"config.rgal.{name}={rgal[name]} must be >= 0.")
  _require(inv.kind != "rgal" or config.model.name != "resnet32_he",
           "config.inversion.kind='rgal' mines the teacher's stage-3 and stage-4 features; "
           "config.model.name='resnet32_he' has 3 stages: use 'resnet32' or kind='standard'.")
  _require(inv.kind != "rgal" or config.method == "rfd" or rgal.striplet == 0,
           f"config.inversion.kind='rgal' adds the replay triplet (config.rgal.striplet="
           f"{rgal.striplet}) to method rfd only; for config.method={config.method!r} pass "
           "--config.rgal.striplet=0 (inversion-side RGAL only).")
  _require(inv.ce_temperature > 0,
           f"config.inversion.ce_temperature={inv.ce_temperature} must be > 0.")
  distill = config.distill
  for name in ("lambda_ce", "lambda_hkd", "lambda_rkd", "lambda_ft_ce", "lambda_dist_old",
               "lambda_dist_new", "lambda_lfd", "abd_mu", "lwf_mu"):
    _require(distill[name] >= 0, f"config.distill.{name}={distill[name]} must be >= 0.")
  for name in ("dist_temperature", "lwf_temperature"):
    _require(distill[name] > 0, f"config.distill.{name}={distill[name]} must be > 0.")
  for name in ("dist_inter_weight", "dist_intra_weight"):
    _require(distill.get(name, 1.0) >= 0,
             f"config.distill.{name}={distill.get(name)} must be >= 0.")
  min_old = distill.get("dist_inter_min_old", 2)
  _require(isinstance(min_old, int) and not isinstance(min_old, bool) and min_old >= 1,
           f"config.distill.dist_inter_min_old={min_old!r} must be an integer >= 1.")
  _require(config.log.every_steps >= 1,
           f"config.log.every_steps={config.log.every_steps} must be >= 1.")
  ckpt = config.ckpt
  for name in ("enabled", "allow_config_change"):
    _require(isinstance(ckpt[name], bool),
             f"config.ckpt.{name}={ckpt[name]!r} must be True or False.")
  _require(ckpt.every_steps >= 1, f"config.ckpt.every_steps={ckpt.every_steps} must be >= 1.")
  _require(ckpt.keep >= 1, f"config.ckpt.keep={ckpt.keep} must be >= 1 (checkpoints kept).")
  _require(isinstance(config.init_from, str),
           f"config.init_from={config.init_from!r} must be a path or \"\" (from scratch).")
  return spec


def main_phase_epochs(config) -> tuple[int, str]:
  """(the main phase's epochs per task, how they follow from the config): optim.epochs, less
  optim.ft_epochs for the methods with a head fine-tuning phase (rdfcil, rfd)."""
  from rfd_jax.methods import learners  # pylint: disable=g-import-not-at-top  (models; only here)
  optim = config.optim
  if learners.get_learner(config).has_finetune_phase:
    return (optim.epochs - optim.ft_epochs,
            f"config.optim.epochs={optim.epochs} − config.optim.ft_epochs={optim.ft_epochs} "
            f"for {config.method}")
  return optim.epochs, f"config.optim.epochs={optim.epochs} for {config.method}"


def check_milestones(config) -> None:
  """ConfigError if an lr milestone (an epoch of the main phase) is never reached: every one must
  be below the main phase's epochs, or the lr would silently never decay there."""
  milestones = tuple(config.optim.milestones)
  epochs, why = main_phase_epochs(config)
  late = [m for m in milestones if m >= epochs]
  if not late:
    return
  example = f"epochs below {epochs}, e.g. --config.optim.milestones='({epochs // 2},)', or " if (
      epochs > 1) else ""
  raise errors.ConfigError(
      f"config.optim.milestones={milestones}: {late[0]} is not an epoch of the {epochs}-epoch "
      f"main phase ({why}), so the lr would never decay there; pass {example}"
      "--config.optim.milestones='()' for a constant lr.")


JOBS = ("dfcil", "teacher", "dfkd")


def job_of(config) -> str:
  """config.job, "dfcil" (the class-incremental experiment) when the config has none."""
  job = config.get("job", "dfcil")
  if job not in JOBS:
    raise errors.ConfigError(f"config.job={job!r} is unknown; expected one of {JOBS}.")
  return job
