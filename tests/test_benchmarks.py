"""The benchmark scripts still run (on the CPU, tiny model): a broken one is found here, not on the GPU."""
import json
import subprocess
import sys

import pytest

from tests.checkpoints import REPO

pytestmark = pytest.mark.slow


def test_backends_benchmark_runs_each_backend_and_variant_in_its_own_process_and_prints_the_table(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.backends", "--tiny", "--backends", "hf", "--rows", "16", "--steps", "3", "--warmup-steps", "1",
         "--batch-size", "2", "--grad-accum", "2", "--gen-rows", "4", "--gen-batch-sizes", "1,4,auto", "--batch1-rows", "1",
         "--max-new-tokens", "4", "--no-load-in-4bit", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"hf before", "hf after"}
    result = results["hf before"]
    assert result["train"]["steps"] == 3 and result["train"]["train_tokens_per_s"] > 0
    assert result["train"]["steady_tokens_per_s"] > 0 and len(result["train"]["losses"]) == 3
    assert result["train"]["rows_per_pass"] == 2 and result["train"]["effective_batch_size"] == 4
    generate = result["generate"]
    assert generate["batch_4"]["rows"] == 4 and generate["batch_1"]["rows"] == 1
    assert generate["batch_4"]["rows_a_batch"] == 4 and generate["batch_auto"]["rows_a_batch"] == 4  # 4 rows fit
    assert all(g["tokens_per_s"] > 0 for g in generate.values())
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| measure | hf before | hf after | hf: after / before |"
    assert any(line.startswith("| train tokens/s, whole run | ") for line in table)
    assert any(line.startswith("| generate tokens/s, batch 4 | ") for line in table)
    assert any(line.startswith("| auto: rows a batch | 4 | 4 | 1.00x |") for line in table)
    assert any(line.startswith("| rows a pass x passes a step | 2 x 2 | 2 x 2 |") for line in table)  # CPU: auto is batch_size
