"""The house: production code (core/, stages/) never reaches into benchmarks/ or tests/, holds no
switch that only a benchmark sets, and README's layout names every module of core/."""

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.checkpoints import REPO

PRODUCTION = sorted([*REPO.glob("core/**/*.py"), *REPO.glob("stages/*.py")])
BENCHMARKS = sorted(REPO.glob("benchmarks/*.py"))


def tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"))


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def class_attributes(paths) -> dict[str, str]:
    """Non-method attributes assigned in a class body: name -> where."""
    found = {}
    for path in paths:
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.ClassDef):
                for statement in node.body:
                    targets = (
                        statement.targets
                        if isinstance(statement, ast.Assign)
                        else [statement.target]
                        if isinstance(statement, ast.AnnAssign)
                        else []
                    )
                    for target in targets:
                        if isinstance(target, ast.Name):
                            place = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                            found[target.id] = f"{place}: {node.name}.{target.id}"
    return found


def attributes_written(paths) -> set[str]:
    """Attributes these files assign on an object (`x.name = ...`, `setattr(x, "name", ...)`)."""
    written = set()
    for path in paths:
        for node in ast.walk(tree(path)):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, (ast.AugAssign, ast.AnnAssign))
                else []
            )
            written.update(t.attr for t in targets if isinstance(t, ast.Attribute))
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "setattr"
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
            ):
                written.add(node.args[1].value)
    return written


def test_production_code_never_imports_benchmarks_or_tests():
    reaching = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in PRODUCTION
        for name in sorted(imported_modules(path))
        if name.split(".")[0] in ("benchmarks", "tests")
    ]
    assert not reaching, reaching


def test_no_class_attribute_is_a_switch_only_benchmarks_set():
    by_benchmarks = attributes_written(BENCHMARKS) - attributes_written(PRODUCTION)
    switches = [where for name, where in class_attributes(PRODUCTION).items() if name in by_benchmarks]
    assert not switches, f"class attributes that only benchmarks/ set: {switches}"


def test_the_check_finds_such_a_switch(tmp_path):
    production, benchmark = tmp_path / "backend.py", tmp_path / "bench.py"
    production.write_text(
        "class Backend:\n    name = 'hf'\n    legacy_path = False\n\n    def run(self):\n        self.name = 'x'\n"
    )
    benchmark.write_text("from core.backend import Backend\nBackend.legacy_path = True\nBackend.name = 'y'\n")
    by_benchmarks = attributes_written([benchmark]) - attributes_written([production])
    assert {name for name in class_attributes([production]) if name in by_benchmarks} == {"legacy_path"}


def test_each_package_of_core_says_what_it_is_for():
    for init in sorted(REPO.glob("core/*/__init__.py")):
        doc = ast.get_docstring(tree(init))
        assert doc and len(doc) > 20, f"{init.relative_to(REPO)}: no docstring saying what the package is for"


def test_readme_layout_names_every_module_of_core_and_only_modules_that_exist():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("\n## ")] if "\n## " in layout else layout
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)`[^|]* \| (.*) \|$", layout, re.M)}
    named = set()
    for path, what in rows.items():
        if path.startswith("core/"):
            assert (REPO / path).exists(), f"README's layout names {path}, which does not exist"
            if path.endswith("/"):  # a package: its modules named in the row as `name.py`
                named.update(f"{path}{name}" for name in re.findall(r"`(\w+\.py)`", what))
            else:
                named.add(path)
    modules = {str(p.relative_to(REPO)) for p in REPO.glob("core/**/*.py") if p.name != "__init__.py"}
    assert modules - named == set(), f"modules README's layout does not name: {sorted(modules - named)}"
    assert named - modules == set(), f"README's layout names modules that do not exist: {sorted(named - modules)}"


# The layers of core/ (training and answering on the model, apart from each other; the export free of
# torch) are import-linter's contracts in pyproject.toml; these run it and show that it can fail.
def lint_imports(root: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )


def test_the_import_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_import_contracts_find_answering_code_in_training(tmp_path):
    for part in ("core", "stages"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    sft = tmp_path / "core/train/sft.py"
    # the kind of import that made a decoder edit rerun fine-tuning: inside a function, as it was
    answering = (
        "def _answer(model, rows, g):\n"
        "    from core.decode.answer import generate_responses\n\n"
        "    return generate_responses(model, rows, g)\n"
    )
    sft.write_text(sft.read_text() + "\n\n" + answering)
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "core.train.sft -> core.decode.answer" in result.stdout
    assert "the training stages never reach answering code BROKEN" in result.stdout


def padding_side_owners(paths, root: Path = REPO) -> set[str]:
    """Modules that set a tokenizer's padding side (`x.padding_side = ...`)."""
    owners = set()
    for path in paths:
        for node in ast.walk(tree(path)):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if any(isinstance(t, ast.Attribute) and t.attr == "padding_side" for t in targets):
                owners.add(path.relative_to(root).as_posix())
    return owners


def test_one_module_owns_the_tokenizers_padding_side():
    assert padding_side_owners(PRODUCTION) == {"core/models/base.py"}


def test_the_layout_check_finds_a_second_padding_owner(tmp_path):
    (tmp_path / "core/train").mkdir(parents=True)
    (tmp_path / "core/models").mkdir(parents=True)
    trainer, facade = tmp_path / "core/train/sft.py", tmp_path / "core/models/base.py"
    trainer.write_text("def run(model):\n    model.tokenizer.padding_side = 'right'\n")
    facade.write_text("def load(tokenizer):\n    tokenizer.padding_side = 'left'\n")
    assert padding_side_owners([trainer, facade], tmp_path) == {"core/train/sft.py", "core/models/base.py"}


def long_functions(paths, most: int = 70, root: Path = REPO) -> list[str]:
    """Functions longer than `most` lines (decorators aside), as `path: name (lines)`."""
    found = []
    for path in paths:
        for node in ast.walk(tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= most:
                found.append(f"{path.relative_to(root).as_posix()}: {node.name} ({node.end_lineno - node.lineno + 1})")
    return found


def test_no_function_is_longer_than_seventy_lines():
    assert long_functions([*PRODUCTION, *BENCHMARKS]) == []


# signatures that are not ours to choose: transformers' attention interface, a Triton kernel's arguments
FIXED_SIGNATURES = {"decode_step_attention", "_grouped_attention", "_copy_rows"}


def many_parameters(paths, most: int = 5, root: Path = REPO) -> list[str]:
    """Functions taking more than `most` parameters (self and cls aside), as `path: name (count)`."""
    found = []
    for path in paths:
        for node in ast.walk(tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in FIXED_SIGNATURES:
                names = [a.arg for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]]
                count = len([name for name in names if name not in ("self", "cls")])
                if count > most:
                    found.append(f"{path.relative_to(root).as_posix()}: {node.name} ({count})")
    return found


def test_the_decoder_hands_one_request_down_no_function_takes_more_than_five_parameters():
    """What a batch is asked for travels as one DecodeRequest (core/decode/request.py), not as loose arguments."""
    assert many_parameters(sorted(REPO.glob("core/decode/*.py"))) == []


def test_the_parameter_check_finds_a_long_signature(tmp_path):
    source = tmp_path / "loose.py"
    source.write_text("def decode(model, prompts, lengths, stop, pad, generation, longest):\n    return 1\n")
    assert many_parameters([source], root=tmp_path) == ["loose.py: decode (7)"]


def test_the_length_check_finds_a_long_function(tmp_path):
    source = tmp_path / "long.py"
    source.write_text("def short():\n    return 1\n\n\ndef long():\n" + "    x = 1\n" * 70 + "    return x\n")
    assert long_functions([source], root=tmp_path) == ["long.py: long (72)"]


def static_cache_deciders(paths, root: Path = REPO) -> set[str]:
    """Modules that read the `static_cache` setting (`x.static_cache`): each one decides, in part,
    whether the static-cache decoder runs."""
    found = set()
    for path in paths:
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.Attribute) and node.attr == "static_cache" and isinstance(node.ctx, ast.Load):
                found.add(path.relative_to(root).as_posix())
    return found


def private_attention_writers(paths, root: Path = REPO) -> set[str]:
    """Modules that assign a model config's private `_attn_implementation` (transformers' setter
    `set_attn_implementation` is the public way)."""
    found = set()
    for path in paths:
        for node in ast.walk(tree(path)):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if any(isinstance(t, ast.Attribute) and t.attr.startswith("_attn_implementation") for t in targets):
                found.add(path.relative_to(root).as_posix())
    return found


def test_one_place_decides_whether_the_static_cache_decoder_runs():
    assert static_cache_deciders(PRODUCTION) == {"core/decode/static_cache.py"}
    assert private_attention_writers(PRODUCTION) == set()


def test_the_decoder_checks_find_a_second_decider_and_a_private_write(tmp_path):
    (tmp_path / "core/models").mkdir(parents=True)
    facade = tmp_path / "core/models/base.py"
    facade.write_text(
        "from core.decode import static_cache\n\n"
        "def answer(model, generation):\n"
        "    model.config._attn_implementation = 'sdpa'\n"
        "    return generation.static_cache and static_cache.decode\n"
    )
    assert static_cache_deciders([facade], tmp_path) == {"core/models/base.py"}
    assert private_attention_writers([facade], tmp_path) == {"core/models/base.py"}
