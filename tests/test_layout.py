"""The package layout's contracts: no import cycle anywhere in src/biojepac (module-level and lazy
imports alike), nothing imports the CLI, and `train/` holds only what every model shares."""

import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "biojepac"


def import_graph(root: pathlib.Path = SRC) -> dict[str, set[str]]:
    """module -> the project modules it imports (any import statement, at any depth of the file)."""
    mods = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {m: set() for m in mods}
    for name, f in mods.items():
        pkg = name if f.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None (depth-first search with colours)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_src():
    assert find_cycle(import_graph()) is None


def test_nothing_imports_the_cli():
    graph = import_graph()
    assert [m for m, deps in graph.items() if "biojepac.cli" in deps] == []


def test_train_holds_only_shared_machinery():
    names = {f.stem for f in (SRC / "train").glob("*.py")} - {"__init__"}
    assert names <= {"loop", "checkpoint", "ema", "mesh", "distributed", "run_folder"}, names
    graph = import_graph()
    # the shared loop knows no model
    assert not [d for m, deps in graph.items() if m.startswith("biojepac.train") for d in deps
                if d.startswith("biojepac.models")]
