"""The architecture is checked, not remembered: layers (import-linter), no import circle, few deferred imports."""

import ast
import io
import pathlib
from contextlib import redirect_stdout

import grimp
from importlinter.cli import lint_imports

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_DEFERRED = 5  # imports of tfpurify modules inside functions of tfpurify/, each with a comment saying why


def test_the_import_contracts_hold():
    out = io.StringIO()
    with redirect_stdout(out):
        status = lint_imports(config_filename=str(ROOT / ".importlinter"), no_cache=True, no_logo=True)
    assert status == 0, out.getvalue()


def test_no_import_circle():
    graph = grimp.build_graph("tfpurify", "cli")
    circles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            chain = graph.find_shortest_chain(importer=imported, imported=importer)  # and back again?
            if chain:
                circles.append(" -> ".join((importer, *chain)))
    assert circles == []


def _deferred_imports(path):
    """(line, text) of every import of a tfpurify module inside a function of `path`."""
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for func in ast.walk(ast.parse(source)):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if any(n == "tfpurify" or n.startswith("tfpurify.") for n in names) or getattr(node, "level", 0):
                found.append((node.lineno, lines[node.lineno - 1]))
    return sorted(set(found))


def test_few_deferred_imports_each_saying_why():
    deferred = {f"{path.relative_to(ROOT)}:{line}": text
                for path in sorted((ROOT / "tfpurify").rglob("*.py"))
                for line, text in _deferred_imports(path)}
    assert len(deferred) <= MAX_DEFERRED, deferred
    assert [where for where, text in deferred.items() if "#" not in text] == []


def test_the_deferred_import_check_sees_one(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from tfpurify import data\n    import numpy\n    return data, numpy\n")
    assert _deferred_imports(module) == [(2, "    from tfpurify import data")]


def test_no_file_in_the_project_refers_to_the_design_folder():
    root = pathlib.Path(__file__).resolve().parent.parent
    offenders = []
    for path in root.rglob("*"):
        if any(part in (".git", ".venv", "runs", "saved_models", ".ci") or part.endswith(".egg-info")
               for part in path.relative_to(root).parts):
            continue
        if path.is_file() and path.suffix in (".py", ".md", ".ipynb", ".txt", ".cfg", ".toml", ".json", "") \
                and path.name != "test_architecture.py":
            if "../" + "shared" in path.read_text(errors="ignore"):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []
