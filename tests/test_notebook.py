"""The notebook runs headless top to bottom after `dvc repro` and an experiment, saving its charts;
`dvc plots show` / `dvc plots diff` render the plots declared in dvc.yaml."""

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.checkpoints import REPO
from tests.conftest import copy_repo
from tests.dvc_helpers import run_dvc

pytestmark = pytest.mark.slow
NOTEBOOK = "notebooks/kenya_clinical.ipynb"
FIGURES = ["eda_counts.png", "lengths.png", "rouge_by_run.png", "rouge_by_panel.png", "loss.png"]


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(REPO / NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_experiments):
    """Two experiments: tiny-qwen3 (SFT + DPO) and tiny-llama32 (SFT)."""
    return copy_repo(tiny_experiments, tmp_path_factory.mktemp("notebook") / "repo")


def test_notebook_runs_headless_and_saves_its_charts(two_runs, monkeypatch):
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    notebook = nbformat.read(two_runs / NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(two_runs / "notebooks")}}
    ).execute()

    for name in FIGURES:
        figure = two_runs / "notebooks" / "figures" / name
        assert figure.stat().st_size > 5000, name  # a real chart, not an empty canvas
    outputs = "".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.outputs
    )
    assert "tiny-llama32" in outputs and "tiny-qwen3" in outputs  # both experiments in the table
    assert "sft+dpo" in outputs  # SFT against SFT + DPO
    assert "[answered in" in outputs and "peak_rss_mb" in outputs  # the export asked, and its deploy report


def test_dvc_plots_render_loss_and_per_panel_charts(two_runs, tmp_path):
    run_dvc(two_runs, "exp", "apply", "tiny-qwen3")  # the work tree holds the run with DPO
    run_dvc(two_runs, "plots", "show", "-o", str(tmp_path / "show"))
    run_dvc(two_runs, "plots", "diff", "tiny-llama32", "tiny-qwen3", "-o", str(tmp_path / "diff"))
    for page in (tmp_path / "show" / "index.html", tmp_path / "diff" / "index.html"):
        html = page.read_text()
        assert "Training loss" in html and "Validation ROUGE-L by clinical panel (model)" in html
        assert "PAEDIATRICS" in html  # the per-panel data is in the page, not just the titles
        assert "Preference tuning: reward margin" in html  # the DPO run's reward margins
    assert "tiny-qwen3" in (tmp_path / "diff" / "index.html").read_text()
    # without DPO (align.method: none) the reward-margin plot has no data, and no warning either
    run_dvc(two_runs, "exp", "apply", "tiny-llama32")
    done = run_dvc(two_runs, "plots", "show", "-o", str(tmp_path / "sft"))
    assert "failed to load" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert "Training loss" in (tmp_path / "sft" / "index.html").read_text()
