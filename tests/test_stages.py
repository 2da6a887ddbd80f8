"""Each stage is a function of its settings and its paths, and reruns only for the code it runs.

The first test calls every stage's function on a finished pipeline's files from this process, without
changing directory: the outputs are what `dvc repro` recorded. The second edits answering code and
training code in turn and asks `dvc status` which stages changed: an edit to one side never reruns
the other (the import contracts of pyproject.toml, seen from DVC).
"""

import json
from pathlib import Path

import pytest
import yaml

from core import atomic
from core.config import parse_params
from core.paths import read_table
from tests.dvc_helpers import run_dvc

pytestmark = pytest.mark.slow

# outputs DVC does not cache: they hold times, which differ on every run
UNCACHED = ("metrics/", "dvclive/", "plots/")


def changed_stages(repo: Path) -> dict[str, list]:
    return json.loads(run_dvc(repo, "status", "--json").stdout or "{}")


def changed_outputs(repo: Path) -> dict[str, set[str]]:
    """Per stage, the outputs whose bytes differ from what dvc.lock records."""
    found = {}
    for stage, entries in changed_stages(repo).items():
        outs = {path for entry in entries if isinstance(entry, dict) for path in entry.get("changed outs", {})}
        if outs:
            found[stage] = outs
    return found


def run_stage(work, *inputs) -> None:
    """A stage's function, its outputs swapped in as the runner does once every check has passed."""
    with atomic.Outputs() as outputs:
        work(*inputs, outputs)
        outputs.commit()


def test_each_stage_is_a_function_of_its_settings_and_paths(finished_workspace):
    from stages import align, deploy, evaluate, export, finetune, gguf, predict, prepare, submit

    repo = finished_workspace
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["data"].update({key: str(repo / raw["data"][key]) for key in ("train_csv", "test_csv")})
    params, paths = parse_params(raw), read_table(repo / "paths.yaml").under(repo)
    assert Path.cwd() != repo  # the stages read and write only through `paths`
    for stage in (prepare.prepare, finetune.finetune, align.align, export.export, gguf.gguf_files, predict.predict):
        run_stage(stage, params, paths)
    run_stage(evaluate.evaluate, paths)
    run_stage(submit.submit, paths)
    run_stage(deploy.deploy, params, paths)
    # the cached outputs are those dvc.lock records (the export's ONNX files are not bit-stable run to run)
    changed = {
        stage: {out for out in outs if not out.startswith(UNCACHED)}
        for stage, outs in changed_outputs(repo).items()
        if stage != "export"
    }
    assert {stage: outs for stage, outs in changed.items() if outs} == {}
    report = json.loads((repo / "metrics/deploy.json").read_text())
    assert report["timed"]["model_tokens"]["mean"] > 0  # the export answered, in a process of its own


@pytest.mark.parametrize(
    ("module", "stages"),
    [
        ("core/decode/generation.py", {"predict"}),
        ("core/decode/repetition.py", {"predict"}),
        ("core/export/runtime.py", {"export", "predict", "deploy"}),
        ("core/export/gguf_file.py", {"gguf"}),
        ("core/train/sft.py", {"finetune"}),
        ("core/train/common.py", {"finetune", "align"}),
        ("core/train/dpo.py", {"align"}),
    ],
)
def test_an_edit_reruns_only_the_stages_that_run_the_edited_code(finished_workspace, module, stages):
    repo = finished_workspace
    assert changed_stages(repo) == {}
    (repo / module).write_text((repo / module).read_text() + "\n# an edit\n")
    assert set(changed_stages(repo)) == stages
