"""Test-session setup: one persistent XLA compilation cache for the whole session.

Many tests compile the same small steps (tiny runs in-process and in subprocesses); sharing the
compiled executables through a fresh, session-private cache directory cuts the suite's time without
changing any result (a cache hit is the same executable). Set before jax is imported anywhere.
"""

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix="rfd_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR  # inherited by the subprocess tests
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
