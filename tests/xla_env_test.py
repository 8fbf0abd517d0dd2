"""xla_env: the fast XLA:CPU flag is set only where it is known to exist and the run is on CPU."""

import pytest

from rfd_jax.cli import xla_env

FLAG = "--xla_cpu_experimental_ynn_fusion_type="


@pytest.mark.parametrize("environ, version, plugins, expected", [
    ({}, "0.10.2", [], FLAG),
    ({"JAX_PLATFORMS": "cpu"}, "0.10.0", [], FLAG),
    ({"XLA_FLAGS": ""}, "0.10.2", [], None),  # set by the user, even empty: left alone
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, "0.10.2", [], None),
    ({}, "0.11.0", [], None),  # the flag may not exist there; an unknown flag aborts XLA
    ({}, "0.9.2", [], None),
    ({}, None, [], None),  # no jaxlib
    ({}, "0.10.2", ["jax_cuda12_plugin"], None),  # the run may be on a GPU
    ({"JAX_PLATFORMS": "cuda"}, "0.10.2", [], None),
])
def test_fast_cpu_flags_decision(environ, version, plugins, expected):
  value, reason = xla_env.fast_cpu_flags(environ, jaxlib_version=version,
                                         accelerator_plugins=plugins)
  assert value == expected and reason


def test_set_fast_cpu_flags_sets_and_logs_once(monkeypatch):
  monkeypatch.setattr(xla_env, "_installed_jaxlib", lambda: "0.10.2")
  monkeypatch.setattr(xla_env, "_installed_plugins", lambda: [])
  environ, logged = {}, []
  assert xla_env.set_fast_cpu_flags(environ, log=lambda fmt, *args: logged.append(fmt % args))
  assert environ == {"XLA_FLAGS": FLAG}
  assert len(logged) == 1 and FLAG in logged[0] and "XLA_FLAGS= for XLA's defaults" in logged[0]
  assert not xla_env.set_fast_cpu_flags(environ, log=logged.append)  # now the user's setting
  assert environ == {"XLA_FLAGS": FLAG} and len(logged) == 1
  monkeypatch.setattr(xla_env, "_installed_plugins", lambda: ["libtpu"])
  assert not xla_env.set_fast_cpu_flags({}, log=logged.append) and len(logged) == 1


def test_installed_jaxlib_and_plugins_are_read():
  version = xla_env._installed_jaxlib()  # pylint: disable=protected-access
  assert version is None or version[0].isdigit()
  assert set(xla_env._installed_plugins()) <= set(xla_env.ACCELERATOR_PLUGINS)  # pylint: disable=protected-access
