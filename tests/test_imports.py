"""The house rules of the import graph: no cycle, imports run one way (cli -> run -> wings -> data -> contract), and
only the CLI registry names the built-in pipelines. Read from the source with `ast`, every import counted (function
level too)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ('harness', 'legacy', 'phiml_native')
CONTRACT = {'harness.pipeline', 'harness.config', 'harness.errors', 'harness.plan', 'harness.model', 'harness.atomic',
            'harness.provenance'}
WINGS = ('harness.cache', 'harness.equivalence', 'harness.selftest', 'harness.bench', 'harness.report', 'harness.scale')
REGISTRY = 'harness.cli.registry'


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob('*.py'):
            name = '.'.join(path.relative_to(ROOT).with_suffix('').parts)
            modules[name.removesuffix('.__init__')] = path
    return modules


def _edges(modules: dict[str, Path]) -> set[tuple[str, str]]:
    edges = set()
    for name, path in modules.items():
        package = name if path.name == '__init__.py' else name.rpartition('.')[0]
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    parts = package.split('.')
                    base = '.'.join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                # `from package import module` depends on the module; `from module import name` on the module
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition('.')[0]
                if target and target != name:
                    edges.add((name, target))
    return edges


MODULES = _modules()
EDGES = _edges(MODULES)


def layer(module: str) -> int:
    """0 contract, 1 data, 2 wings, 3 run, 4 cli, 5 the `python -m` entry points and the lazy package root."""
    if module in CONTRACT or module.startswith(('legacy', 'phiml_native')):
        return 0
    if module.startswith('harness.data'):
        return 1
    if '.'.join(module.split('.')[:2]) in WINGS and not module.endswith('__main__'):  # not harness.scale_out
        return 2
    if module in ('harness.run', 'harness.training_run'):
        return 3
    if module.startswith('harness.cli'):
        return 4
    return 5


def _cycle(edges: set[tuple[str, str]]) -> list[str] | None:
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_is_read():
    assert ('harness.run', 'harness.equivalence.diagnose') in EDGES
    assert ('harness.cli.registry', 'harness.pipeline') in EDGES
    assert ('phiml_native.pipeline', 'phiml_native.dataset') in EDGES  # relative imports resolved


def test_there_is_no_import_cycle():
    assert _cycle(EDGES) is None, f"import cycle: {' -> '.join(_cycle(EDGES))}"


def test_packages_do_not_import_each_other_in_a_cycle():
    def package(module):
        return '.'.join(module.split('.')[:2]) if module.startswith('harness.') else module.split('.')[0]
    # a package's `__main__` is an entry point that hands over to the CLI, not part of what the package provides
    coarse = {(package(a), package(b)) for a, b in EDGES if package(a) != package(b) and not a.endswith('__main__')}
    assert _cycle(coarse) is None, f"package cycle: {' -> '.join(_cycle(coarse))}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({('a', 'b'), ('b', 'c'), ('c', 'a')}) == ['a', 'b', 'c', 'a']
    assert _cycle({('a', 'b'), ('b', 'c')}) is None


@pytest.mark.parametrize('module', sorted(m for m in MODULES if m.startswith('harness')))
def test_only_the_registry_names_the_built_in_pipelines(module):
    named = sorted(b for a, b in EDGES if a == module and b.startswith(('legacy', 'phiml_native')))
    assert named == [] or module == REGISTRY, f"{module} imports {named}; only {REGISTRY} may"


@pytest.mark.parametrize('module', sorted(m for m in MODULES if m.startswith(('legacy', 'phiml_native'))))
def test_pipelines_import_only_the_contract(module):
    own = module.split('.')[0]
    foreign = sorted(b for a, b in EDGES if a == module and not b.startswith(own) and b not in CONTRACT)
    assert foreign == [], f"{module} imports {foreign}; a pipeline may import only {sorted(CONTRACT)}"


def test_imports_run_one_way():
    upward = sorted(f"{a} -> {b}" for a, b in EDGES if layer(b) > layer(a))
    assert upward == []
