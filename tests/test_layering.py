"""The package's imports point down: jobs -> evaluation -> methods/models -> core/data/config.

Every `import` and `from ... import` in sslx, at module level or inside a
function, is read from the source (ast), resolved to the sslx module it
names, and checked: no module imports one of a higher layer, and the module
graph has no cycle.
"""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sslx")

# Lower numbers are lower layers; a module may import its own layer and those below.
LAYERS = {
    "sslx.errors": 0, "sslx.registry": 0,
    "sslx.core": 1, "sslx.data": 1, "sslx.config": 1,
    "sslx.models": 2,
    "sslx.methods": 3, "sslx.export": 3,
    "sslx.evaluation": 4, "sslx.encoder": 4,
    "sslx.jobs": 5,
}


def _modules() -> dict[str, str]:
  """{'sslx.core.loop': path} for every module of the package."""
  found = {}
  for directory, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        parts = os.path.relpath(path, os.path.dirname(ROOT))[:-3].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        found[".".join(parts)] = path
  return found


MODULES = _modules()


def _imports(module: str, path: str) -> set[str]:
  """The sslx modules `module` imports (a name imported from a package counts as its submodule
  when one exists)."""
  tree = ast.parse(open(path).read(), path)
  package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("sslx"))
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([base] if base else []))
      if not base.startswith("sslx"):
        continue
      for alias in node.names:
        child = f"{base}.{alias.name}"
        out.add(child if child in MODULES else base)
  return {m for m in out if m in MODULES and m != module}


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _layer(module: str) -> int | None:
  for prefix, layer in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
    if module == prefix or module.startswith(prefix + "."):
      return layer
  return None  # the package itself ('sslx'): its lazy facade may name anything


def test_every_module_has_a_layer():
  assert [m for m in MODULES if m != "sslx" and _layer(m) is None] == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "sslx"))
def test_imports_point_down(module):
  upward = sorted(i for i in GRAPH[module]
                  if i != "sslx" and _layer(i) is not None and _layer(i) > _layer(module))
  assert upward == [], f"{module} (layer {_layer(module)}) imports higher layers: {upward}"


def test_no_import_cycles():
  graph = {m: {i for i in deps if i != "sslx"} for m, deps in GRAPH.items() if m != "sslx"}
  state, cycle = {}, []

  def visit(node, stack):
    state[node] = "open"
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        cycle.append(stack[stack.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt, stack + [nxt])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  assert cycle == [], " ; ".join(" -> ".join(c) for c in cycle)


def test_the_checker_sees_function_local_imports():
  # evaluation/few_label.py imports the loop inside no function, but subsets imports
  # datasets inside one: both kinds must be in the graph.
  assert "sslx.data.datasets" in GRAPH["sslx.data.subsets"]
  assert "sslx.core.loop" in GRAPH["sslx.evaluation.few_label"]
