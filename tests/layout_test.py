"""The package layout's rules (README "Layout"): imports point down the layers, no import cycles,
folders of about ten modules, modules under 400 lines (models excepted).

Layers, bottom to top; a module imports only from its own layer or those below:
  data, models  →  methods  →  engine  →  jobs  →  cli  →  tools  →  the programs (main, prepare_data)
"""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rfd_jax")
LAYERS = {"data": 0, "models": 0, "methods": 1, "engine": 2, "jobs": 3, "cli": 4, "tools": 5}
PROGRAM_LAYER = 6  # rfd_jax/main.py, rfd_jax/prepare_data.py
MAX_MODULES_PER_FOLDER = 12
MAX_LINES = 400


def _modules() -> dict[str, str]:
  """Dotted module name → file, for every module of the package."""
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
        out[dotted.removesuffix(".__init__")] = path
  return out


def _imports(path: str, modules: dict[str, str]) -> set[str]:
  """The package's modules `path` imports, at any depth of the file (function-level included)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name in modules}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rfd_jax"):
      for alias in node.names:
        name = f"{node.module}.{alias.name}"
        found.add(name if name in modules else node.module)
  return found


def _layer(module: str) -> int:
  parts = module.split(".")
  if len(parts) == 2 and parts[1] not in LAYERS:
    return PROGRAM_LAYER
  return LAYERS.get(parts[1], -1) if len(parts) > 1 else -1


@pytest.fixture(scope="module")
def graph():
  modules = _modules()
  return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def test_every_module_lives_in_a_known_layer(graph):
  unplaced = [m for m in graph if m != "rfd_jax" and _layer(m) < 0]
  assert not unplaced, f"modules outside the layers {sorted(LAYERS)}: {unplaced}"


def test_imports_point_down(graph):
  upward = sorted(f"{m} imports {d}" for m, deps in graph.items() for d in deps
                  if d != "rfd_jax" and _layer(d) > _layer(m))
  assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_no_import_cycles(graph):
  """Depth-first search for a back edge; reports the first cycle found."""
  state: dict[str, int] = {}  # 1 on the stack, 2 done

  def visit(module, stack):
    state[module] = 1
    for dep in sorted(graph.get(module, ())):
      if state.get(dep) == 1:
        return stack[stack.index(dep):] + [dep] if dep in stack else [module, dep]
      if dep not in state:
        cycle = visit(dep, stack + [dep])
        if cycle:
          return cycle
    state[module] = 2
    return None

  for module in sorted(graph):
    if module not in state:
      cycle = visit(module, [module])
      assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_rules_catch_a_forbidden_import(graph):
  """The checks above on a graph with one planted upward import and one planted cycle."""
  planted = {m: set(d) for m, d in graph.items()}
  planted["rfd_jax.methods.losses"].add("rfd_jax.engine.loop")
  assert _layer("rfd_jax.engine.loop") > _layer("rfd_jax.methods.losses")
  planted["rfd_jax.engine.loop"].add("rfd_jax.engine.plan")
  planted["rfd_jax.engine.plan"].add("rfd_jax.engine.loop")
  with pytest.raises(AssertionError, match="point up"):
    test_imports_point_down(planted)
  with pytest.raises(AssertionError, match="import cycle"):
    test_no_import_cycles(planted)


def test_folders_stay_small_and_say_what_they_hold():
  for folder, _, files in os.walk(PACKAGE):
    if "__pycache__" in folder:
      continue
    if not any(f.endswith(".py") for f in files):
      continue  # data files (tools/aot/gpu_targets)
    modules = [f for f in files if f.endswith(".py") and f not in ("__init__.py", "__main__.py")]
    assert len(modules) <= MAX_MODULES_PER_FOLDER, (folder, sorted(modules))
    init = os.path.join(folder, "__init__.py")
    assert os.path.exists(init), f"{folder} is not a package"
    doc = ast.get_docstring(ast.parse(open(init).read()))
    assert doc and len(doc) > 40, f"{init} needs a docstring saying what lives there"


def test_modules_stay_short():
  long = []
  for module, path in _modules().items():
    lines = sum(1 for _ in open(path))
    if lines > MAX_LINES and not module.startswith("rfd_jax.models."):
      long.append(f"{module}: {lines} lines")
  assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"
