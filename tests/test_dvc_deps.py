"""dvc.yaml's deps cannot drift from the code: each stage lists every project module it runs.

A stage runs its own module, every project module that one imports (at the top or inside a
function, directly or through other modules) and any module it starts as `python -m` in a
process of its own. The shared runner (stages/__init__.py and stages/runner.py: logging, signals, error lines) is
left out on purpose: changing how a stage is run does not change what it computes.
"""

import ast
import dataclasses
import re
from pathlib import Path

import yaml

from tests.checkpoints import REPO

PACKAGES = ("core", "stages")
RUNNER = ("stages/__init__.py", "stages/runner.py")


def module_file(name: str) -> str | None:
    """The project file of a dotted module name (a package's __init__.py), or None outside the project."""
    if name.split(".")[0] not in PACKAGES:
        return None
    path = Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if (REPO / candidate).is_file():
            return candidate.as_posix()
    return None


def modules_used(path: str) -> set[str]:
    """Project modules the file at `path` imports or starts, with the packages they sit in."""
    names = set()
    for node in ast.walk(ast.parse((REPO / path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from core import io`
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", node.value)
        ):
            names.add(node.value)  # `python -m stages.ask`, run in a process of its own
    files = set()
    for name in names:
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py too
            found = module_file(".".join(parts[:depth]))
            if found:
                files.add(found)
    return files


def import_closure(path: str) -> set[str]:
    seen, todo = set(), [path]
    while todo:
        current = todo.pop()
        if current in seen or current in RUNNER:
            continue
        seen.add(current)
        todo.extend(modules_used(current) - seen)
    return seen


def covered(file: str, deps: list[str]) -> bool:
    return any(file == dep or file.startswith(dep.rstrip("/") + "/") for dep in deps)


def missing_deps(dvc_yaml: dict) -> list[str]:
    missing = []
    for name, stage in dvc_yaml["stages"].items():
        module = re.search(r"-m (stages\.\w+)", stage["cmd"]).group(1)
        for file in sorted(import_closure(module_file(module))):
            if not covered(file, stage.get("deps", [])):
                missing.append(f"{name} -> {file}")
    return missing


def test_each_stage_depends_on_every_module_it_runs():
    missing = missing_deps(yaml.safe_load((REPO / "dvc.yaml").read_text()))
    assert not missing, "dvc.yaml: stages that do not list a module they run:\n" + "\n".join(missing)


def test_the_closure_follows_imports_inside_functions_and_modules_started_as_processes():
    deploy = import_closure("stages/deploy.py")
    assert {"stages/deploy.py", "stages/ask.py", "core/export/runtime.py", "core/data.py", "core/errors.py"} <= deploy
    assert not set(RUNNER) & deploy
    # core/models/backends.py imports unsloth and transformers inside functions; finetune reaches it
    # through core/models/base.py
    assert {"core/models/backends.py", "core/models/base.py", "core/__init__.py"} <= import_closure(
        "stages/finetune.py"
    )
    assert "core/models/base.py" not in import_closure("stages/submit.py")


def test_the_check_finds_a_module_missing_from_a_stage():
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    dvc_yaml["stages"]["evaluate"]["deps"].remove("core/data.py")
    assert "evaluate -> core/data.py" in missing_deps(dvc_yaml)


# --- paths: written once (paths.yaml), read by dvc.yaml through `vars` and by each stage's command line through
# core/paths.py, which hands them to the stage's function as `paths`
NOT_TRACKED = {"checkpoints"}  # resumable trainer state: a DVC output would be deleted before the stage runs
TOP_FOLDERS = ("data/", "models/", "metrics/", "dvclive/", "plots/", "submissions/")


def table() -> dict[str, str]:
    return yaml.safe_load((REPO / "paths.yaml").read_text())["paths"]


def keys_in_entry(entry: dict) -> set[str]:
    """The paths.yaml names a stage's deps, outs, metrics and plots use (`${paths.<name>}`)."""
    listed = set()
    for section in ("deps", "outs", "metrics", "plots"):
        for item in entry.get(section, []):
            path = next(iter(item)) if isinstance(item, dict) else item
            listed.update(re.findall(r"\$\{paths\.(\w+)\}", path))
    return listed


def keys_in_code(path: Path) -> set[str]:
    """The paths a stage script reads (`paths.<name>`)."""
    return {
        node.attr
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Attribute)
        and (
            (isinstance(node.value, ast.Name) and node.value.id == "paths")
            or (isinstance(node.value, ast.Attribute) and node.value.attr == "paths")  # device.paths.<name>
        )
    }


def disagreements(stages: dict, code_dir: Path, paths: dict[str, str]) -> list[str]:
    found = []
    for name, entry in stages.items():
        listed, used = keys_in_entry(entry), keys_in_code(code_dir / f"{name}.py")
        inside = {key for key in used for other in listed if paths[key].startswith(paths[other] + "/")}
        found += [
            f"{name}: its code uses {key} ({paths[key]}), dvc.yaml does not list it"
            for key in sorted(used - listed - inside - NOT_TRACKED)
        ]
        found += [
            f"{name}: dvc.yaml lists {key} ({paths[key]}), its code never uses it" for key in sorted(listed - used)
        ]
    return found


def test_each_stage_and_its_dvc_entry_name_the_same_paths():
    assert disagreements(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"], REPO / "stages", table()) == []


def test_the_stage_scripts_write_no_path_of_their_own():
    literal = [
        f"{path.relative_to(REPO)}: {node.value!r}"
        for path in sorted((REPO / "stages").glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(TOP_FOLDERS)
    ]
    assert literal == [], "paths belong in paths.yaml (core/paths.py):\n" + "\n".join(literal)


def test_the_paths_check_finds_a_stage_and_its_entry_apart(tmp_path):
    (tmp_path / "evaluate.py").write_text("def evaluate(paths):\n    write(paths.eval_metrics, read(paths.val))\n")
    stages = {"evaluate": {"deps": ["core/paths.py", "${paths.test}"], "metrics": [{"${paths.eval_metrics}": {}}]}}
    assert disagreements(stages, tmp_path, table()) == [
        "evaluate: its code uses val (data/prepared/val.jsonl), dvc.yaml does not list it",
        "evaluate: dvc.yaml lists test (data/prepared/test.jsonl), its code never uses it",
    ]


def test_every_name_in_the_paths_table_is_one_the_code_knows():
    from core.paths import Paths

    assert set(table()) == {field.name for field in dataclasses.fields(Paths)}
