"""Imports go down the layers of docs/architecture.md, and no module imports another's private
names. Read from the source with `ast` (every import, the ones inside functions too)."""

import ast
from pathlib import Path

import pytest

from conftest import REPO

# Top first; a package may import its own modules and any package on a lower row.
LAYERS = [
    {"__main__"},  # python -m vqct
    {"cli"},
    {"bench", "__init__"},  # benchmarks; vqct.load_tokenizer, the library's front door
    {"downstream"},  # models over frozen codes (VQA, captioning): read code sets, log to MLflow
    {"launch"},
    {"train"},
    {"eval"},
    {"tracking"},
    {"stage2"},  # generators over codes: use a tokenizer, never the reverse
    {"tokenizer"},
    {"align", "quantize"},
    {"text", "models", "data", "kernels"},
    {"config"},
    {"records"},
    {"errors", "files", "host_memory", "seeds"},
]
RANK = {package: row for row, packages in enumerate(LAYERS) for package in packages}
# The import roots (pyproject.toml's packages.find `where`): a module's dotted name is its path
# below one of them, so `vqct.train.loop` is framework/vqct/train/loop.py.
ROOTS = ["framework", "kernels"]
PACKAGES = ["vqct", "vqct_kernels"]


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of vqct and vqct_kernels."""
    found = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = list(path.relative_to(REPO / root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _where(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _package(module: str) -> str:
    """vqct.train.loop -> train; vqct.errors -> errors; vqct (the root __init__) -> __init__;
    vqct_kernels.lookup -> kernels."""
    parts = module.split(".")
    if parts[0] == "vqct_kernels":
        return "kernels"
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every vqct import in PATH."""
    tree = ast.parse(path.read_text(), str(path))
    package_parts = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names if alias.name.startswith("vqct")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package_parts[: len(package_parts) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("vqct"):
                out.append((target, [alias.name for alias in node.names], node.lineno))
    return out


def upward_imports(modules: dict[str, Path]) -> list[str]:
    problems = []
    for module, path in modules.items():
        mine = _package(module)
        for target, names, line in _imports(path, module):
            theirs = _package(target) if target != "vqct" else "__init__"
            if target == "vqct" and names:  # `from vqct import x`: x is a package or a root name
                theirs = names[0] if names[0] in RANK else "__init__"
            if theirs == mine:
                continue
            if theirs not in RANK or mine not in RANK:
                problems.append(f"{_where(path)}:{line}: {mine} or {theirs} is not in LAYERS")
            elif RANK[theirs] <= RANK[mine]:
                problems.append(f"{_where(path)}:{line}: {mine} imports {target} ({theirs} is not below it)")
    return problems


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_aliases(tree: ast.AST) -> set[str]:
    """Names bound to vqct modules: `import vqct.x as m`, `from vqct_kernels import lookup`."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("vqct")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vqct"):
            aliases |= {a.asname or a.name for a in node.names if a.name[:1].islower()}
    return aliases


def private_imports(modules: dict[str, Path]) -> list[str]:
    """`from vqct.x import _name`, and `module._name` on a name bound to a vqct module."""
    problems = []
    for module, path in modules.items():
        for target, names, line in _imports(path, module):
            problems += [f"{_where(path)}:{line}: imports {target}.{n}, a private name" for n in names if _private(n)]
        tree = ast.parse(path.read_text(), str(path))
        aliases = _module_aliases(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and _private(node.attr)):
                problems.append(f"{_where(path)}:{node.lineno}: uses {node.value.id}.{node.attr}, a private name")
    return problems


def test_module_path_is_file_path():
    """Every module imports from the file its dotted name spells, below framework/ or kernels/,
    and nothing else sits in those roots (a tool reading imports as text finds each file)."""
    import importlib.util

    modules = _modules()
    assert {m.split(".")[0] for m in modules} == set(PACKAGES)
    for module, path in modules.items():
        assert Path(importlib.util.find_spec(module).origin).resolve() == path.resolve(), module


def test_every_package_is_placed_in_a_layer():
    packages = {_package(m) for m in _modules()}
    assert packages <= set(RANK), sorted(packages - set(RANK))


def test_imports_only_go_down_the_layers():
    assert upward_imports(_modules()) == []


def test_no_module_imports_another_modules_private_names():
    assert private_imports(_modules()) == []


@pytest.mark.parametrize("planted,expected", [
    ("from vqct.launch.runs import choose_run\n", "train imports vqct.launch.runs"),
    ("import vqct.train.loop\n", "eval imports vqct.train.loop"),
    ("from vqct.tracking.registry import register_run\n", "tokenizer imports vqct.tracking.registry"),
])
def test_a_planted_upward_import_is_caught(tmp_path, planted, expected):
    """The check itself can fail: the same scan over a copy with one upward import added."""
    modules = _modules()
    victim = {"train": "vqct.train.step", "eval": "vqct.eval.alignment", "tokenizer": "vqct.tokenizer.model"}
    module = victim[expected.split()[0]]
    copy = tmp_path / modules[module].name
    copy.write_text(modules[module].read_text() + "\n\ndef _planted():\n    " + planted)
    problems = upward_imports({module: copy})
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("planted", ["from vqct.train.loop import _last_line\n",
                                     "from vqct_kernels import lookup\nlookup._reference = None\n"])
def test_a_planted_private_import_is_caught(tmp_path, planted):
    modules = _modules()
    copy = tmp_path / "step.py"
    copy.write_text(modules["vqct.train.step"].read_text() + "\n" + planted)
    problems = private_imports({"vqct.train.step": copy})
    assert len(problems) == 1 and ("_last_line" in problems[0] or "lookup._reference" in problems[0]), problems


def test_every_vqct_path_the_docs_name_exists():
    """`grep -rn "vqct/" docs README.md` names only files and folders of this repository."""
    import re

    named = set()
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        named |= {(doc.name, m.rstrip(".,)")) for m in re.findall(r"[\w./-]*vqct/[\w./-]*", doc.read_text())}
    assert named and [(doc, path) for doc, path in sorted(named) if not (REPO / path).exists()] == []
