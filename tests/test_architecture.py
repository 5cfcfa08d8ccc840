"""The architecture, as written in pyproject.toml's import-linter contracts: CI fails when a module imports
against the layers (e.g. the front-end importing the API) or the package imports the training code."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    # import-linter through the interpreter running the tests, so that it is found whether or not its venv's
    # scripts are on PATH (``venv/bin/python -m pytest``)
    if importlib.util.find_spec("importlinter") is None:
        pytest.fail("import-linter is missing: pip install -e '.[test]' installs it")
    cmd = [
        sys.executable,
        "-c",
        "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "BROKEN" not in r.stdout and "KEPT" in r.stdout


# Calls that create or overwrite a file, and the argument that names it.
_PATH_ARG = {"save": 0, "savez": 0, "savez_compressed": 0, "savefig": 0, "open": 0}
_SCRATCH = {("training/corpus/smoke.py", "make_collection"), ("training/eval/tasks.py", "make_smoke_tasks"),
            ("training/corpus/notes.py", "render_notes")}  # fmt: skip  # throwaway test data; fluidsynth's scratch input


def _direct_writes(path: Path) -> list[str]:
    """Writes in ``path`` that do not go through ``coala_embed.files``: a call that creates or overwrites a file
    is allowed only on a parameter of the function around it (the temporary file ``atomic_write`` hands its
    callback) or on a handle opened by such a call. Appends (``open(..., "a")``: the batch journal, whose reader
    cuts a torn last record, and training's steps.csv progress log) are not replacements and are not checked."""
    import ast

    tree = ast.parse(path.read_text())
    found: list[str] = []

    def visit(node: ast.AST, params: set[str], func: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            params = params | {a.arg for a in node.args.args + node.args.kwonlyargs}
            func = getattr(node, "name", func)
        if isinstance(node, ast.With):
            params = params | {i.optional_vars.id for i in node.items if isinstance(i.optional_vars, ast.Name)}
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            target: ast.AST | None = None
            if name in ("write_text", "write_bytes") and isinstance(f, ast.Attribute):
                target = f.value
            elif name == "write" and owner == "sf" or name == "save" and owner == "torch":
                target = node.args[1 if owner == "torch" else 0] if node.args else None
            elif name in _PATH_ARG and node.args and (owner in ("np", "fig", "") or name == "savefig"):
                mode = (
                    node.args[1]
                    if len(node.args) > 1
                    else next((k.value for k in node.keywords if k.arg == "mode"), None)
                )
                writes = name != "open" or (isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wx"))
                target = node.args[0] if writes else None
            if isinstance(target, ast.Call) and isinstance(target.func, ast.Name) and target.func.id == "Path":
                target = target.args[0] if target.args else None  # Path(tmp)
            rel = path.relative_to(ROOT).as_posix()
            if target is not None and not (isinstance(target, ast.Name) and target.id in params):
                if (rel, func) not in _SCRATCH:
                    found.append(f"{rel}:{node.lineno} {ast.unparse(node)[:80]}")
        for child in ast.iter_child_nodes(node):
            visit(child, params, func)

    visit(tree, set(), "")
    return found


def test_every_file_the_package_and_the_pipeline_write_is_written_atomically():
    files = sorted((ROOT / "coala_embed").glob("*.py")) + sorted((ROOT / "training").glob("*.py"))
    direct = [w for f in files if f.name != "files.py" for w in _direct_writes(f)]
    assert not direct, "write through coala_embed.files (atomic_write and its wrappers):\n" + "\n".join(direct)


def test_the_atomic_write_check_sees_a_direct_write(tmp_path):
    bad = ROOT / "training" / "_probe_direct_write.py"
    try:
        bad.write_text(
            'import numpy as np\n\ndef f(out):\n    (out / "a.json").write_text("{}")\n    np.save(out / "b.npy", 1)\n'
        )
        assert len(_direct_writes(bad)) == 2
    finally:
        bad.unlink()


MAX_FUNCTION_LINES = 100


def _long_functions(files) -> list[str]:
    import ast

    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.name} {n}")
    return found


def test_no_function_of_the_package_or_the_pipeline_is_longer_than_a_screenful():
    files = sorted((ROOT / "coala_embed").rglob("*.py")) + sorted((ROOT / "training").rglob("*.py"))
    assert not _long_functions(files)


def test_the_length_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def long():\n{body}\n")
    assert _long_functions([tmp_path / "m.py"]) == [f"{tmp_path / 'm.py'}:long {MAX_FUNCTION_LINES + 1}"]
