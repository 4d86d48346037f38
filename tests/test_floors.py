"""Floors, lowest first: tunegate/ -> data_checks/ -> tasks/ -> flows/ -> deployments/ and cli/.

A lower floor never imports an upper one, at module level or inside a function."""

import ast
import json
import subprocess
import sys

from conftest import ROOT

UPPER = {"tasks", "flows", "deployments", "cli"}


def imported_top_names(path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in a file, lazy ones inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_the_ground_package_imports_no_upper_floor():
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                 for path in sorted((ROOT / "tunegate").rglob("*.py"))
                 for line, name in imported_top_names(path) if name in UPPER]
    assert not offenders, offenders


def test_the_import_scan_sees_lazy_imports(tmp_path):
    # The check above must be able to fail: an import inside a function counts too.
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from flows.finetune import finetune_pipeline\n    import tasks.sft\n")
    assert imported_top_names(module) == [(1, "os"), (4, "flows"), (5, "tasks")]


def test_importing_the_config_loads_no_torch_transformers_or_prefect_flow_engine():
    heavy = ["torch", "transformers", "prefect.flow_engine", "prefect.flows", "great_expectations"]
    code = ("import json, sys; import tunegate.config; "
            f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_command_line_sits_above_flows_and_deployments():
    names = {name for _, name in imported_top_names(ROOT / "cli" / "main.py")}
    assert {"flows", "tasks", "deployments"} <= names
    assert not (ROOT / "tunegate" / "cli.py").exists()


def test_readme_layout_lists_every_top_level_folder_once():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed = [line.split()[0].rstrip("/") for line in block.splitlines() if line and not line.startswith(" ")]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    folders = {path.split("/")[0] for path in tracked.splitlines() if "/" in path}
    assert sorted(listed) == sorted(set(listed)), "a folder is listed twice"
    assert set(listed) == folders
