"""The command line's front door (absl + ml_collections): every mistake a user can make on it ends
in one `error: <problem and fix>` line on stderr and exit status 2, never a traceback.

`run(main)` is `absl.app.run(main)` with `parse_flags` as its flags parser, plus output that may be
piped into `head` (a reader that goes away ends the program quietly). `parse_flags`, before absl
parses anything:
  * answers --help / --helpshort / -? / -h (and --helpfull) on stdout with exit status 0;
  * loads the `--config` file itself, so that a missing, unreadable or broken file, or one without
    a usable get_config(), is reported in one line (ml_collections would raise a chained
    traceback when the config is first used);
  * checks that every `--config.<field>` override names a field of the config, suggesting the
    closest name, or naming the replacement of a removed field (saved_config.RENAMED_FIELDS)
    (ml_collections raises an AttributeError traceback);
and then reports absl's own parse errors (a value of the wrong type, an unknown flag, a missing
--config) in the same one-line form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import difflib
import glob
import importlib.util
import os
import re
import sys
import traceback
from typing import Any, NoReturn

from absl import app, flags
import ml_collections

from rfd_jax.engine import saved_config
from rfd_jax.methods import tasks

EXIT_USAGE = 2
HELP_FLAGS = {"help": "short", "helpshort": "short", "?": "short", "h": "short", "helpfull": "full"}
# The shipped configs: the `configs` package next to `rfd_jax`, in a checkout (also installed with
# `pip install -e .`) and in site-packages (`pip install .`).
CONFIGS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def fail(message: str) -> NoReturn:
  """Prints `error: <first line>` (further lines indented below it) and exits with status 2."""
  lines = str(message).strip().splitlines() or ["(no message)"]
  sys.stderr.write(f"error: {lines[0]}\n" + "".join(f"  {line}\n" for line in lines[1:]))
  sys.stderr.flush()
  sys.exit(EXIT_USAGE)


def _silence_stdout() -> None:
  """The reader of stdout went away (e.g. `| head`): point stdout at /dev/null, so the flush at
  exit cannot raise BrokenPipeError again (the recipe of Python's `signal` documentation)."""
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, sys.stdout.fileno())


def write_stdout(text: str) -> bool:
  """Writes and flushes `text`; False (and stdout silenced) if the reader has gone away."""
  try:
    sys.stdout.write(text)
    sys.stdout.flush()
    return True
  except BrokenPipeError:
    _silence_stdout()
    return False


def help_request(argv: Sequence[str]) -> str | None:
  """"short" or "full" if argv (program name first) asks for help, else None."""
  for arg in argv[1:]:
    if arg == "--":
      break
    if not arg.startswith("-"):
      continue
    name, _, value = arg.lstrip("-").partition("=")
    if name in HELP_FLAGS and value.lower() not in ("false", "0"):
      return HELP_FLAGS[name]
  return None


def help_text(kind: str) -> str:
  """The main module's docstring and its flags (all flags for "full"), as absl's --help."""
  doc = (sys.modules["__main__"].__doc__ or "").strip()
  if kind == "full":
    return f"{doc}\n\nflags:\n{flags.FLAGS.get_help()}\n"
  return (f"{doc}\n\nflags:\n{flags.FLAGS.main_module_help()}\n\n"
          "Try --helpfull to get a list of all flags.\n")


def _config_argument(argv: Sequence[str], name: str) -> str | None:
  """The value of --<name> in argv (`--config=x` or `--config x`), the last one if repeated."""
  value = None
  for i, arg in enumerate(argv[1:], start=1):
    if arg == "--":
      break
    match = re.fullmatch(rf"--?{name}(=(.*))?", arg)
    if match:
      value = match.group(2) if match.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
  return value


def _with_config_argument(argv: Sequence[str], name: str, value: str) -> list[str]:
  """argv with every --<name> value (`--config=x` or `--config x`) replaced by `value`."""
  out, skip = [], False
  for i, arg in enumerate(argv):
    if skip:
      skip = False
      continue
    if i > 0 and "--" not in argv[1:i] and re.fullmatch(rf"--?{name}(=.*)?", arg):
      out.append(f"--{name}={value}")
      skip = "=" not in arg
      continue
    out.append(arg)
  return out


def override_paths(argv: Sequence[str], name: str = "config") -> list[str]:
  """The field paths of the `--config.<path>[=value]` (and `--noconfig.<path>`) overrides."""
  paths = []
  for arg in argv[1:]:
    if arg == "--":
      break
    match = re.match(rf"--?(?:no)?{name}\.([^=]+)", arg)
    if match:
      paths.append(match.group(1))
  return paths


def shipped_configs() -> list[str]:
  """The names of the shipped configs (configs/<name>.py), sorted."""
  paths = sorted(glob.glob(os.path.join(CONFIGS_DIR, "*.py")))
  return [os.path.basename(p)[:-3] for p in paths if not p.endswith("__init__.py")]


def _available_configs() -> str:
  names = shipped_configs()
  return (f"a shipped one by name ({', '.join(names)}; configs/<name>.py from any directory)"
          if names else "(no shipped config found)")


def resolve_config_path(path: str) -> str:
  """The file a --config path names: `path` itself if it exists; otherwise a shipped config, when
  `path` is its name (`digits`, `digits.py`) or `configs/<name>.py` (so the README's commands work
  from any directory); otherwise `path` unchanged (reported missing by the caller)."""
  if os.path.exists(path):
    return path
  folder, file = os.path.split(path)
  name = file[:-3] if file.endswith(".py") else file
  shipped = os.path.join(CONFIGS_DIR, f"{name}.py")
  if name in shipped_configs() and folder in ("", "configs", f"configs{os.sep}",
                                              f".{os.sep}configs"):
    return shipped
  return path


def _where_in(error: BaseException, path: str) -> str:
  """" (file, line N)" of the last traceback frame inside the file at `path`, or ""."""
  if isinstance(error, SyntaxError):
    return ""  # its message names the file and line already
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if os.path.abspath(f.filename) == os.path.abspath(path)]
  return f" ({path}, line {frames[-1].lineno})" if frames else ""


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`path[:argument]` → get_config([argument]) of the file at path (or of the shipped config it
  names, `resolve_config_path`); `fail`s with one line if the file is missing, unreadable, broken,
  has no get_config() or returns no ConfigDict."""
  path, sep, argument = spec.partition(":")
  path = resolve_config_path(path)
  if not os.path.isfile(path):
    what = "is a directory" if os.path.isdir(path) else "does not exist"
    fail(f"--config {spec}: {path} {what}; pass a config file, or {_available_configs()}.")
  if not os.access(path, os.R_OK):
    fail(f"--config {spec}: {path} is not readable.")
  try:
    module_spec = importlib.util.spec_from_file_location("rfd_jax_config_check", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (whatever the file raises)
    fail(f"--config {spec}: loading it failed: {_first_line(e)}{_where_in(e, path)}.")
  if not callable(getattr(module, "get_config", None)):
    fail(f"--config {spec}: {path} defines no get_config() function.")
  try:
    config = module.get_config(*([argument] if sep else []))
  except Exception as e:  # pylint: disable=broad-except
    hint = (f"; {path} takes no ':{argument}' argument" if sep and isinstance(e, TypeError)
            and "positional argument" in str(e) else "")
    fail(f"--config {spec}: get_config() failed: {_first_line(e)}{_where_in(e, path)}{hint}.")
  if not isinstance(config, ml_collections.ConfigDict):
    fail(f"--config {spec}: get_config() returned {type(config).__name__}, not an "
         "ml_collections.ConfigDict.")
  return config


def field_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every leaf field of `config` as a dotted path: ["method", "data.dataset", ...]."""
  paths = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      paths += field_paths(value, f"{prefix}{key}.")
    else:
      paths.append(f"{prefix}{key}")
  return paths


def unknown_field_message(config: ml_collections.ConfigDict, path: str,
                          name: str = "config") -> str | None:
  """None if `path` is a field of `config`, else the error text: the replacement of a removed
  field (saved_config.RENAMED_FIELDS), or the closest field names."""
  node, walked = config, []
  for part in path.split("."):
    where = ".".join([name, *walked])
    if not isinstance(node, ml_collections.ConfigDict):
      return (f"--{name}.{path}: {where} is a {type(node).__name__} value and has no field "
              f"{part!r}; override --{where}=... itself.")
    if part not in node:
      renamed = saved_config.RENAMED_FIELDS.get(path)
      if renamed is not None:
        return (f"--{name}.{path}: {name}.{path} was removed; use --{name}.{renamed}=... "
                f"instead.")
      everywhere = field_paths(config)
      same_leaf = [p for p in everywhere if p.rsplit(".", 1)[-1] == part]
      close = difflib.get_close_matches(".".join(walked + [part]), everywhere, n=3, cutoff=0.6)
      suggestions = list(dict.fromkeys(same_leaf + close))[:3]
      hint = (f"did you mean {' or '.join(f'--{name}.{s}' for s in suggestions)}?" if suggestions
              else "--print_config lists the fields.")
      return f"--{name}.{path}: {where} has no field {part!r}; {hint}"
    node, walked = node[part], walked + [part]
  return None


def _value_of(config: ml_collections.ConfigDict, path: str) -> Any:
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def flag_error_message(error: Exception, config: ml_collections.ConfigDict | None,
                       name: str = "config") -> str:
  """absl's parse error as one line; an override of the wrong type also says what is expected."""
  text = " ".join(str(error).split())
  match = re.match(rf"flag --{name}\.([^=]+)=(.*?): (.*)", text)
  if match and config is not None:
    path, value, reason = match.groups()
    try:
      current = _value_of(config, path)
    except (KeyError, AttributeError):
      return text
    if isinstance(current, ml_collections.ConfigDict):
      return (f"--{name}.{path}={value}: {name}.{path} is a group of fields; override them one by "
              f"one, e.g. --{name}.{path}.{next(iter(current.keys()))}=...")
    if isinstance(current, bool):
      reason = "expected True or False"
    kind = type(current).__name__
    article = "an" if kind[0] in "aeiou" else "a"
    return (f"--{name}.{path}={value}: {reason}; {name}.{path} is {article} {kind} "
            f"(now {current!r}).")
  if text.startswith("Unknown command line flag"):
    return f"{text}; --help lists the flags."
  if re.search(rf"Flag --{name} must have a value", text):
    return (f"--{name} is required, e.g. --{name} configs/digits.py: a config file, or "
            f"{_available_configs()}.")
  return text


def parse_flags(argv: Sequence[str], *, config_flag: str = "config",
                flag_values: flags.FlagValues | None = None) -> list[str]:
  """absl flags parser (`app.run(main, flags_parser=parse_flags)`); see the module docstring.
  flag_values: where the flags are defined (default absl's FLAGS)."""
  flag_values = flags.FLAGS if flag_values is None else flag_values
  argv = list(argv)
  kind = help_request(argv)
  if kind is not None:
    write_stdout(help_text(kind))
    sys.exit(0)
  config = None
  spec = _config_argument(argv, config_flag) if config_flag in flag_values else None
  if spec is not None:
    config = load_config_file(spec)
    path, sep, argument = spec.partition(":")
    if resolve_config_path(path) != path:  # a shipped config by name: ml_collections loads the file
      argv = _with_config_argument(argv, config_flag, resolve_config_path(path) + sep + argument)
    for path in override_paths(argv, config_flag):
      message = unknown_field_message(config, path, config_flag)
      if message:
        fail(message)
  try:
    remaining = flag_values(argv)
  except flags.Error as e:
    fail(flag_error_message(e, config, config_flag))
  except Exception as e:  # pylint: disable=broad-except  (ml_collections' own errors, one line)
    fail(f"{_first_line(e)}")
  if config is not None:
    for path in override_paths(argv, config_flag):
      message = tuple_type_message(config, flag_values[config_flag].value, path, config_flag)
      if message:
        fail(message)
  return remaining


def tuple_type_message(default: ml_collections.ConfigDict, parsed: ml_collections.ConfigDict,
                       path: str, name: str = "config") -> str | None:
  """The error text if the override of tuple field `path` has elements of another type than the
  default's (ml_collections keeps unparsable elements as strings: "abc" → ("abc",)), else None."""
  before, after = _value_of(default, path), _value_of(parsed, path)
  if not (isinstance(before, tuple) and before and isinstance(after, tuple)):
    return None
  kinds = {type(v) for v in before}
  numeric = kinds <= {int, float}
  bad = [v for v in after if not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                  if numeric else type(v) in kinds)]
  if not bad:
    return None
  kind = "numbers" if numeric else " / ".join(sorted(k.__name__ for k in kinds))
  return (f"--{name}.{path}: {bad[0]!r} is not one of the {kind} that {name}.{path} holds "
          f"(now {before!r}); pass e.g. --{name}.{path}='{before!r}'.")


def format_config(config: ml_collections.ConfigDict, name: str = "config") -> str:
  """One `config.<field> = <value>` line per field, in the config's order (--print_config)."""
  return "\n".join(f"{name}.{path} = {_value_of(config, path)!r}"
                   for path in field_paths(config)) + "\n"


def run(main: Callable[[list[str]], Any], **parse_kwargs) -> NoReturn:
  """absl.app.run(main) with `parse_flags`; output piped into a reader that goes away (`| head`)
  ends the program with status 1 and no BrokenPipeError traceback."""
  try:
    try:
      app.run(main, flags_parser=lambda argv: parse_flags(argv, **parse_kwargs))
    finally:
      sys.stdout.flush()  # a closed pipe surfaces here, not in the interpreter's exit
  except BrokenPipeError:
    _silence_stdout()
    sys.exit(1)


def default_workdir(config) -> str:
  job = config.get("job", "dfcil")  # validated later, where a bad value is reported cleanly
  if job != "dfcil":
    return os.path.join("runs", f"{job}-{config.data.dataset}-{config.model.name}")
  order = config.data.class_order
  # a long dotted explicit order gets a short name (a path component must stay under 255 bytes)
  order = tasks.order_dir_name(order) if isinstance(order, str) and "," not in order else "custom"
  return os.path.join("runs", f"{config.data.dataset}-{config.method}-{order}")
