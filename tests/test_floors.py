"""Floors, lowest first: tunegate/ -> data_checks/ -> serve/ -> tasks/ -> flows/ -> deployments/ and cli/.

A lower floor never imports an upper one, at module level or inside a function."""

import ast
import json
import subprocess
import sys

from conftest import ROOT


def imported_top_names(path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in a file, lazy ones inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


FLOORS = ["tunegate", "data_checks", "serve", "tasks", "flows", "deployments", "cli"]


def test_no_floor_imports_a_floor_above_it():
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                 for level, floor in enumerate(FLOORS)
                 for path in sorted((ROOT / floor).rglob("*.py"))
                 for line, name in imported_top_names(path) if name in FLOORS[level + 1:]]
    assert not offenders, offenders


def defined_names(path) -> list[str]:
    return [n.name for n in ast.parse(path.read_text()).body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("__")]


def module_name(path) -> str:
    parts = path.with_suffix("").relative_to(ROOT).parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def used_names(path, module: str) -> set[str]:
    """Names a file uses from `module`: its own names when it is that module, else what it imports from
    it (`from module import x`) or reads as an attribute of it (`gx_suite.x`, `format_check.x`)."""
    tree = ast.parse(path.read_text())
    own = module_name(path) == module
    aliases = {}  # local name -> module it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            aliases |= {a.asname or a.name: f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname or a.name: a.name for a in node.names}
    used = set()
    for node in ast.walk(tree):
        if own and isinstance(node, ast.Name):
            used.add(node.id)
        elif own and isinstance(node, ast.Attribute):
            used.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and node.module == module:
            used |= {a.name for a in node.names}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                aliases.get(node.value.id) == module:
            used.add(node.attr)
    return used


def unused_definitions(roots: list) -> list[str]:
    files = [p for r in roots for p in sorted(r.rglob("*.py"))]
    unused = []
    for path in files:
        if not any(path.is_relative_to(ROOT / floor) for floor in ("tunegate", "data_checks", "serve", "tasks")):
            continue
        module = module_name(path)
        used = set().union(*(used_names(p, module) for p in files))
        unused += [f"{module}.{name}" for name in defined_names(path) if name not in used]
    return unused


def test_every_function_and_class_of_the_lower_floors_is_used_somewhere():
    # Dead code (data_checks.gx_suite.run_suite was one) reads as a second way to do a thing.
    roots = [ROOT / d for d in (*FLOORS, "bench", "tests")]
    assert unused_definitions(roots) == []


def test_the_dead_code_scan_can_fail(tmp_path, monkeypatch):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "a.py").write_text("def used():\n    pass\n\n\ndef dead():\n    pass\n")
    (tmp_path / "tasks" / "b.py").write_text("from tasks.a import used\n\nused()\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert unused_definitions([tmp_path / "tasks"]) == ["tasks.a.dead"]


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


def test_flows_read_as_stage_calls_with_at_most_four_arguments():
    # A stage takes its config section and typed results, not the section's fields one by one.
    flow = next(n for n in ast.parse((ROOT / "flows" / "finetune.py").read_text()).body
                if isinstance(n, ast.FunctionDef) and n.name == "finetune_pipeline")
    calls = [c for c in ast.walk(flow) if isinstance(c, ast.Call)]
    assert len(calls) >= 14  # every stage, called from the flow body
    assert max(len(c.args) + len(c.keywords) for c in calls) <= 4
