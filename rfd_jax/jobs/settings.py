"""The engine's settings read off a config, once, by a job's setup: the engine never sees the
config itself."""

from __future__ import annotations

from rfd_jax.engine import checkpointing, loop, saved_config


def resume_settings(config) -> checkpointing.ResumeSettings:
  """What checkpointing.resume needs: config.ckpt.enabled / allow_config_change, config.init_from
  and the config as a checkpoint stores it."""
  return checkpointing.ResumeSettings(
      enabled=bool(config.ckpt.enabled), init_from=config.get("init_from", ""),
      allow_config_change=bool(config.ckpt.allow_config_change),
      config_dict=saved_config.config_dict(config))


def loop_settings(config) -> loop.LoopSettings:
  """What loop.run_plan needs: config.ckpt (enabled, keep, every_steps), config.log (every_steps,
  progress) and the config as a checkpoint stores it."""
  return loop.LoopSettings(
      ckpt_enabled=bool(config.ckpt.enabled), keep=config.ckpt.keep,
      ckpt_every_steps=config.ckpt.get("every_steps", 0),
      log_every_steps=config.log.get("every_steps", 0), progress=config.log.progress,
      config_dict=saved_config.config_dict(config))
