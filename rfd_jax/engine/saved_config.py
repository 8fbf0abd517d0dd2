"""A checkpoint's saved config against the run's: fields renamed since it was saved, the fields
that differ, and the resume check (which differences refuse a resume)."""

from __future__ import annotations

import json

from absl import logging

from rfd_jax.engine import errors, writers

# Fields that were removed, with the field that replaced each (same values, same meaning, except
# model.conv_dtype: config.dtype now sets what every network's convolutions run in, with float32
# activations; before, config.dtype=bfloat16 made the CIFAR ResNets' activations bf16).
RENAMED_FIELDS = {
    "inversion.rgal_triplet": "rgal.triplet",
    "inversion.rgal_direction": "rgal.syn_triplet_direction",
    "distill.lambda_striplet": "rgal.striplet",
    "model.conv_dtype": "dtype",
}



# Config fields a resume may change without the escape hatch: they do not change the result.
# data.device_resident changes where batches are gathered, not their values; the *.loop and
# *.upsample fields change only float rounding (tests/train_loops_test.py,
# tests/upsample_conv_test.py), and with "auto" a run resumed on another kind of machine changes
# them anyway.
HARMLESS_FIELDS = ("log.", "ckpt.", "init_from", "data.data_dir", "data.decode_threads",
                   "data.cache_gb", "data.device_resident", "optim.loop", "inversion.loop",
                   "synthesis.loop", "inversion.upsample", "synthesis.upsample")

class ConfigMismatchError(errors.ConfigError):
  """A resume whose config differs from the checkpoint's in fields that change the result."""



def renamed_field_message(path: str) -> str | None:
  """For a removed field (dotted path below `config.`): the error text naming its replacement."""
  new = RENAMED_FIELDS.get(path)
  if new is None:
    return None
  return f"config.{path} was removed; use config.{new} (--config.{new}=...)."


def upgrade_saved_config(flat: dict) -> tuple[dict, list[str]]:
  """A flattened config saved before fields were renamed (a checkpoint's config.json), in today's
  names: (the upgraded copy, one note per renamed field found). A saved config.dtype="bfloat16"
  next to model.conv_dtype meant bf16 activations, which no longer exist: it becomes
  "bfloat16 (activations)", so comparing it with today's config reports the difference."""
  flat, notes = dict(flat), []
  if "model.conv_dtype" in flat:
    conv_dtype = flat.pop("model.conv_dtype")
    old_dtype = flat.get("dtype", "float32")
    flat["dtype"] = conv_dtype if old_dtype == "float32" else f"{old_dtype} (activations)"
    notes.append(f"config.model.conv_dtype={conv_dtype!r} with config.dtype={old_dtype!r} is "
                 f"config.dtype={flat['dtype']!r}")
  for old, new in RENAMED_FIELDS.items():
    if old in flat and new not in flat:
      flat[new] = flat.pop(old)
      notes.append(f"config.{old} is config.{new}")
  return flat, notes


def _flat_configs(saved: dict, current: dict) -> tuple[dict, dict, list[str]]:
  """Both configs flattened, the saved one in today's field names (it may predate a rename), and
  the notes on the renamed fields it had."""
  flat_saved, notes = upgrade_saved_config(
      writers.flatten_config(saved, json_values=True))
  return flat_saved, writers.flatten_config(current, json_values=True), notes


def config_differences(saved: dict, current: dict) -> tuple[list[str], list[str]]:
  """(fields that change the result, harmless fields) in which two config dicts differ; `saved`
  is read in today's field names (upgrade_saved_config)."""
  saved, current, _ = _flat_configs(saved, current)
  differing = sorted(k for k in saved.keys() | current.keys()
                     if saved.get(k, "<absent>") != current.get(k, "<absent>"))
  harmless = [k for k in differing if k.startswith(HARMLESS_FIELDS)]
  return [k for k in differing if k not in harmless], harmless


def check_config(saved: dict, current: dict, *, allow_change: bool, source: str) -> None:
  """Raises ConfigMismatchError listing the fields (with both values) in which `current` differs
  from the checkpoint's `saved` config, unless only harmless fields differ or `allow_change`.
  A saved config from before a field was renamed is compared under today's names."""
  relevant, harmless = config_differences(saved, current)
  flat_saved, flat_current, notes = _flat_configs(saved, current)
  if notes:
    logging.info("the checkpoint's config predates renamed fields, compared as today's: %s",
                 "; ".join(notes))
  if harmless:
    logging.info("config differs from the checkpoint's in harmless fields: %s", ", ".join(harmless))
  if not relevant:
    return
  listing = "; ".join(f"config.{k}: {flat_saved.get(k, '<absent>')!r} in the checkpoint, "
                      f"{flat_current.get(k, '<absent>')!r} now" for k in relevant)
  if notes:
    listing += f" (the checkpoint's config predates renamed fields: {'; '.join(notes)})"
  if allow_change:
    logging.warning("resuming from %s despite config changes (config.ckpt.allow_config_change): "
                    "%s", source, listing)
    return
  raise ConfigMismatchError(
      f"refusing to resume from {source}: the config differs from the checkpoint's in fields that "
      f"change the result: {listing}. Use another --workdir to start afresh, or pass "
      "--config.ckpt.allow_config_change=True to resume anyway.")


def config_dict(config) -> dict:
  """The config as stored in checkpoints: plain JSON types."""
  return json.loads(json.dumps(config.to_dict(), default=str))
