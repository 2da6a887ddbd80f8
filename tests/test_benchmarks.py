"""The benchmark scripts still run (on the CPU, tiny model): a broken one is found here, not on the GPU."""

import json
import subprocess
import sys

import pytest

from tests.checkpoints import REPO

pytestmark = pytest.mark.slow


def run_benchmark(module: str, *args: str, out) -> tuple[subprocess.CompletedProcess, dict]:
    """`python -m benchmarks.<module> ARGS --out OUT` from the repository; it must succeed. Its output and results."""
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(out.read_text())["results"]


def test_backends_benchmark_runs_each_backend_and_variant_in_its_own_process_and_prints_the_table(tmp_path):
    # the SmolLM2 shape with the toy tokenizer: this checks the script, and each train step on a real
    # vocabulary's 151,936 logits a token cost more than the rest of the test (113 s in the suite, 33-37 s now)
    done, results = run_benchmark(
        "backends",
        *("--tiny", "--shape", "smollm2", "--backends", "hf", "--rows", "16", "--steps", "3", "--warmup-steps", "1"),
        *("--batch-size", "2", "--grad-accum", "2", "--gen-rows", "4", "--gen-batch-sizes", "1,4,auto"),
        *("--batch1-rows", "1", "--max-new-tokens", "4", "--no-load-in-4bit"),
        *("--variants", "profile+static_cache=false,profile"),
        out=tmp_path / "bench.json",
    )
    assert set(results) == {"hf profile+static_cache=false", "hf profile"}
    result = results["hf profile+static_cache=false"]
    assert result["train"]["steps"] == 3 and result["train"]["train_tokens_per_s"] > 0
    assert result["train"]["steady_tokens_per_s"] > 0 and len(result["train"]["losses"]) == 3
    assert result["train"]["rows_per_pass"] == 2 and result["train"]["effective_batch_size"] == 4
    generate = result["generate"]
    assert generate["batch_4"]["rows"] == 4 and generate["batch_1"]["rows"] == 1
    assert generate["batch_4"]["rows_a_batch"] == 4 and generate["batch_auto"]["rows_a_batch"] == 4  # 4 rows fit
    assert all(g["tokens_per_s"] > 0 for g in generate.values())
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert (
        table[0]
        == "| measure | hf profile+static_cache=false | hf profile | hf profile / hf profile+static_cache=false |"
    )
    assert any(line.startswith("| train tokens/s, whole run | ") for line in table)
    assert any(line.startswith("| generate tokens/s, batch 4 | ") for line in table)
    assert any(line.startswith("| auto: rows a batch | 4 | 4 | 1.00x |") for line in table)
    assert any(
        line.startswith("| rows a pass x passes a step | 2 x 2 | 2 x 2 |") for line in table
    )  # CPU: auto is batch_size


def test_sweep_runs_through_the_stages_loader_on_several_splits_and_scores_every_epoch(
    tmp_path, repo_params, toy_checkpoints
):
    import yaml

    from tests.conftest import tiny_raw_params

    raw = tiny_raw_params(repo_params, "qwen3", toy_checkpoints["qwen3"])
    raw["data"]["train_csv"] = str(REPO / "data/sample/train.csv")
    raw["data"]["test_csv"] = str(REPO / "data/sample/test.csv")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    out = tmp_path / "sweep.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.sweep",
            "--params",
            str(params),
            "--out",
            str(out),
            "--seeds",
            "42,1",
            "--per-epoch",
            "--train",
            "e2:epochs=2,learning_rate=1e-3,batch_size=16",
            "--decode",
            "b2:num_beams=2,repetition_penalty=1.2,no_repeat_ngram_size=3,max_new_tokens=6,length_grid=[3,6]",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["split_seed"] for r in records) == [1, 42]
    for r in records:
        assert r["length"]["chosen_by"] == "validation ROUGE-L" and r["length"]["max_new_tokens"] in (3, 6)
        assert set(r["length"]["rougeL_by_length"]) == {"3", "6"}
        assert r["length"]["rougeL_by_length"][str(r["length"]["max_new_tokens"])] == r["model"]["rougeL"]
        assert [e["epoch"] for e in r["epochs_scored"]] == [1.0, 2.0] and len(r["val_loss_by_epoch"]) == 2
        assert r["val_loss"] == min(r["val_loss_by_epoch"]) and 0 <= r["loop_share"] <= 1
        assert "-S models.qwen3.generation.length_grid=[3, 6]" in r["command"] or "length_grid" in r["command"]
    assert "| e2 | none | b2 | 2 |" in done.stdout  # the table: one line, averaged over the two splits


def test_t4_emulation_tells_dtype_choosers_7_5_and_kernel_compilers_the_card():
    from benchmarks.gpu_stage import capability_as_t4

    capability = capability_as_t4(lambda device=None: (9, 0))
    assert capability() == (7, 5)  # our resolve_dtype and Unsloth's bfloat16 check: float16, as on a T4
    # Triton asks through its driver, within a kernel launch: told 7.5 it would build code the H200 cannot load
    driver = {"__name__": "triton.backends.nvidia.driver", "capability": capability}
    assert eval("capability(0)", driver) == (9, 0)
    launcher = {"__name__": "unsloth.kernels.triton_launch", "ask": lambda: eval("capability(0)", driver)}
    assert eval("ask()", launcher) == (9, 0)
    assert eval("capability(0)", {"__name__": "unsloth.models._utils", "capability": capability}) == (7, 5)


def test_static_peer_benchmark_times_each_decoder_in_a_fresh_process(tmp_path):
    """benchmarks/static_peer.py on a tiny stand-in (CPU): ours and transformers' static cache, each
    called twice in a process of its own, the same rows answered to the same length."""
    done, results = run_benchmark(
        "static_peer",
        *("--size", "tiny", "--rows", "3", "--batch-size", "2", "--max-new-tokens", "4", "--beams", "2"),
        *("--decoders", "ours,library-eager"),
        out=tmp_path / "peer.json",
    )
    assert set(results) == {"ours", "library-eager"}
    for result in results.values():
        assert len(result["calls"]) == 2 and all(call["seconds"] > 0 for call in result["calls"])
        assert all(call["mean_new_tokens"] == 4 for call in result["calls"])  # random weights: every row runs to 4
    assert "| ours |" in done.stdout and "| library-eager |" in done.stdout


def test_engines_benchmark_splits_prompt_from_generation_and_refuses_answers_of_another_length(monkeypatch):
    """benchmarks/engines_cpu.py's arithmetic on made-up timings: the warm-up row is left out, the prompt
    rate is the prompt over the 1-token time, the generation rate the other tokens over the difference."""
    from types import SimpleNamespace

    from benchmarks import engines_cpu
    from core.errors import UserError

    timings = {1: [9.0, 0.2, 0.4], 5: [9.0, 0.6, 1.2]}  # seconds a row; the first row warms up
    lengths = {1: 1, 5: 5}

    def answer(engine, rows_file, decoding, threads):
        length = decoding["max_new_tokens"]
        assert decoding["min_new_tokens"] == length and threads == 2
        return {
            "row_seconds": timings[length],
            "new_tokens": [lengths[length]] * 3,
            "peak_rss_mb": 100.0 + length,
            "torch_imported": False,
        }

    monkeypatch.setattr(engines_cpu, "answer", answer)
    args = SimpleNamespace(new_tokens=5, threads=2)
    found = engines_cpu.measure(["--engine", "onnx"], None, [50, 100, 200], {}, args)
    assert found["vignettes"] == 2 and found["ms_per_vignette_median"] == pytest.approx(900.0)
    assert found["prompt_tokens_per_s_median"] == pytest.approx((100 / 0.2 + 200 / 0.4) / 2)
    assert found["generation_tokens_per_s_median"] == pytest.approx((4 / 0.4 + 4 / 0.8) / 2)
    assert found["peak_rss_mb"] == 105.0

    lengths[5] = 3  # an engine that stopped early: its time is not of 5 tokens
    with pytest.raises(UserError, match=r"answers of \[3\] tokens where 5 were asked"):
        engines_cpu.measure(["--engine", "onnx"], None, [50, 100, 200], {}, args)
