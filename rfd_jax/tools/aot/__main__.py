"""`python -m rfd_jax.tools.aot --config ... --target ...`: rfd_jax.tools.aot.command."""

from rfd_jax.cli import usage
from rfd_jax.tools.aot import command

usage.run(command.main)
