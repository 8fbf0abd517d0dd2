"""The fast XLA:CPU default: `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=` on plain CPU runs.

On jaxlib 0.10.x, XLA:CPU hands the elementwise and reduction ops around the convolutions to
XNNPACK ("ynn") fusions, which are much slower here than XLA's own loops; the flag with an empty
value turns them off (bench/RESULTS.md, README "Performance on CPU"). XLA reads XLA_FLAGS once,
when JAX creates its backend, and aborts the process on a flag it does not know. So the flag is
only set when all of these hold:
  * the user has not set XLA_FLAGS (setting it, even to an empty string, is the off switch);
  * jaxlib is 0.10.x, the versions in which the flag is known to exist;
  * no accelerator plugin (CUDA, ROCm, TPU) is installed and JAX_PLATFORMS, if set, is "cpu".
Nothing here imports jax: `set_fast_cpu_flags` must run before JAX initialises its backend (before
the first computation or device query; importing jax earlier is fine).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
import importlib.metadata
import importlib.util
import os

FAST_CPU_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="
KNOWN_JAXLIB_SERIES = ("0.10.",)  # where the flag exists (measured on 0.10.2)
# Modules of the PJRT plugins jax loads for accelerators; `jax_plugins` is the namespace package
# every plugin installs itself under.
ACCELERATOR_PLUGINS = ("jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin",
                       "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")
OFF_SWITCH = "set XLA_FLAGS yourself (XLA_FLAGS= for XLA's defaults) to turn this off"


def _installed_jaxlib() -> str | None:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return None


def _installed_plugins() -> list[str]:
  return [name for name in ACCELERATOR_PLUGINS if importlib.util.find_spec(name) is not None]


def fast_cpu_flags(environ: MutableMapping[str, str], *, jaxlib_version: str | None,
                   accelerator_plugins: list[str]) -> tuple[str | None, str]:
  """Decides whether to set XLA_FLAGS: (the value to set or None, the reason, for the log)."""
  if "XLA_FLAGS" in environ:
    return None, f"XLA_FLAGS={environ['XLA_FLAGS']!r} set by the user"
  if jaxlib_version is None or not jaxlib_version.startswith(KNOWN_JAXLIB_SERIES):
    return None, (f"jaxlib {jaxlib_version} is not one of {KNOWN_JAXLIB_SERIES}, where "
                  f"{FAST_CPU_XLA_FLAGS} is known to exist")
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms and platforms.strip().lower() != "cpu":
    return None, f"JAX_PLATFORMS={platforms!r} is not cpu"
  if accelerator_plugins:
    return None, f"accelerator plugin(s) installed: {', '.join(accelerator_plugins)}"
  return FAST_CPU_XLA_FLAGS, (f"jaxlib {jaxlib_version} on CPU (no accelerator plugin): XLA's own "
                              "loops instead of the slower XNNPACK fusions")


def set_fast_cpu_flags(environ: MutableMapping[str, str] | None = None, *,
                       log: Callable[..., None] | None = None) -> bool:
  """Sets XLA_FLAGS in `environ` (default os.environ) when `fast_cpu_flags` says so; logs one line
  through `log(fmt, *args)` (e.g. absl's logging.info) when it did. Returns whether it did."""
  environ = os.environ if environ is None else environ
  value, reason = fast_cpu_flags(environ, jaxlib_version=_installed_jaxlib(),
                                 accelerator_plugins=_installed_plugins())
  if value is None:
    return False
  environ["XLA_FLAGS"] = value
  if log is not None:
    log("set XLA_FLAGS=%s (%s); %s.", value, reason, OFF_SWITCH)
  return True
