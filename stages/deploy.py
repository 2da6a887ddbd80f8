"""deploy: can the export run where the challenge asked? Size, memory, speed and ROUGE, each against its limit.

The validation vignettes are answered one at a time by `python -m stages.ask` in a process of its
own, as on a device: its peak resident memory is the deployment's, not this stage's. Its ROUGE is
set beside the PyTorch model's (predict's answers, when predict ran the torch engine) and the
prompt echo's. Every limit is judged on the model writing tokens: where the length predict chose is
short (at 0 the answers are the prefix alone and the model runs nothing), the export is also timed
at a length where it must work, and where the submitted answers hold no model token the two engines
are compared at the longest length predict generated (at 0 they would be the prefix against itself);
the report says which answers each figure was measured on.
"""

import importlib.util
import logging
import statistics
import tempfile
from pathlib import Path
from typing import NamedTuple

from core import atomic
from core.config import GenerationConfig, Params, as_dict, derive, load_params
from core.data import ID, TARGET
from core.export.llamacpp import INSTALL
from core.export.runtime import EDGE_FILE
from core.metrics.echo import prompt_echo
from core.metrics.rouge import rouge
from core.paths import Paths, read_table
from core.predictions import read_predictions
from core.resources import directory_mb
from stages import run
from stages.ask import ask_in_own_process

# The challenge's limits (../shared/reference/task.md): at most 1 billion parameters, quantized
# for inference, under 2 GB of RAM and 100 ms a vignette (on a Jetson Nano-class device; here:
# this machine's CPU). The quantized export may lose at most 0.01 ROUGE-L against PyTorch.
MAX_PARAMETERS = 1_000_000_000
MAX_RAM_MB = 2048
MAX_MS_PER_VIGNETTE = 100
MAX_ROUGE_L_LOSS = 0.01
# Speed and memory are judged on answers of at least this many new tokens (or the longest the profile
# asks for, if longer): a latency timed on a handful of tokens, or none, says nothing of the model.
MIN_TIMED_TOKENS = 32
# rows of the split the longer timing answers (the median of 16 is steady; the whole split would
# double the stage's time on a CPU)
TIMED_ROWS = 16
VERDICTS = {True: "pass", False: "FAIL", None: "not judged"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


class Device(NamedTuple):
    """What the export answers with in a process of its own: the pipeline's paths (the export, the adapter it
    must come from) and the profile's decoding. Everything the process reads is handed over."""

    paths: Paths
    generation: GenerationConfig
    engine: str = "onnx"  # or llamacpp: the gguf stage's file through llama.cpp


def answer_in_own_process(device: Device, rows_file: str, max_new_tokens: int) -> dict:
    """The export answering a file of rows (`python -m stages.ask`): its answers, timings and peak memory."""
    paths = device.paths
    arguments = ["--file", rows_file, "--export", paths.export, "--adapter", paths.aligned]
    arguments += ["--max-new-tokens", str(max_new_tokens), "--engine", device.engine]
    return ask_in_own_process(arguments, as_dict(device.generation))


def answer_rows(device: Device, rows: list[dict], max_new_tokens: int) -> dict:
    """The export answering these rows (a part of a split) in a process of its own."""
    with tempfile.TemporaryDirectory(prefix="deploy-rows-") as tmp:
        subset = Path(tmp) / "rows.jsonl"
        atomic.write_jsonl(subset, rows)
        return answer_in_own_process(device, str(subset), max_new_tokens)


def timing_run(
    device: Device, rows: list[dict], rows_file: str, submitted: tuple[int, dict], longest: int
) -> tuple[int, dict]:
    """The answers speed and memory are judged on: the submitted ones where they are long enough, else
    the export answering (some of) the rows again at a length where the model must write."""
    submitted_length, answered = submitted
    if submitted_length >= MIN_TIMED_TOKENS:
        return submitted
    length = max(longest, MIN_TIMED_TOKENS)
    # answers of the prefix alone are worth a warning: what is submitted holds nothing of the model
    log = logging.info if any(answered["new_tokens"]) else logging.warning
    log(
        "the submitted answers are %d new tokens at most (%d hold none): timing %d of the %s rows again "
        "at %d new tokens",
        submitted_length,
        model_tokens(answered)["answers_without"],
        min(len(rows), TIMED_ROWS),
        Path(rows_file).stem,
        length,
    )
    return length, answer_rows(device, rows[:TIMED_ROWS], length)


def compared_answers(
    device: Device, rows: list[dict], submitted: tuple[int, dict], timed: tuple[int, dict], longest: int, engine: str
) -> dict:
    """The export's answers that its ROUGE is set beside PyTorch's on, with what they are: the submitted
    ones where the model wrote in them (or where predict's `engine` was the export: no PyTorch answers to
    set them beside, `torch` None); else the first TIMED_ROWS rows at the longest length predict generated
    (its uncut validation answers are PyTorch's at that length), reusing the timing run when it ran at
    that length."""
    (submitted_length, answered), (timed_length, timed_answers) = submitted, timed
    if any(answered["new_tokens"]) or longest == 0 or engine != "torch":
        return dict(
            answers="submitted",
            max_new_tokens=submitted_length,
            rows=rows,
            export=answered,
            torch=device.paths.val_predictions if engine == "torch" else None,
        )
    part = rows[:TIMED_ROWS]
    if timed_length == longest:
        export = timed_answers
    else:
        logging.info("comparing the engines on %d rows at %d new tokens (predict's uncut answers)", len(part), longest)
        export = answer_rows(device, part, longest)
    uncut = device.paths.val_longest_predictions
    return dict(answers="uncut", max_new_tokens=longest, rows=part, export=export, torch=uncut)


def gguf_report(device: Device, rows: list[dict], length: int, precisions: list[str]) -> dict:
    """The GGUF files' sizes and, where llama.cpp's binding is installed, the Modelfile's file answering the
    timed rows greedily beside the ONNX export on the same rows and length (llama.cpp has no beam search here)."""
    folder = Path(device.paths.gguf)
    report = {"files_mb": {p: (folder / f"model-{p}.gguf").stat().st_size / 2**20 for p in precisions}}
    if not precisions:
        return report
    if importlib.util.find_spec("llama_cpp") is None:
        return report | {"llamacpp": f"not measured: {INSTALL}"}
    greedy = derive(device.generation, "deploy (greedy, both engines)", num_beams=1, do_sample=False)
    for engine in ("llamacpp", "onnx"):
        answered = answer_rows(device._replace(generation=greedy, engine=engine), rows, length)
        ms = [s * 1000 for s in answered["row_seconds"]]
        report[engine] = {
            "ms_per_vignette": {"median": statistics.median(ms), "p90": percentile(ms, 0.9)},
            "tokens_per_s": sum(answered["new_tokens"]) / max(sum(answered["row_seconds"]), 1e-9),
            "peak_rss_mb": answered["peak_rss_mb"],
            "model_tokens": model_tokens(answered),
        }
    report["compared_on"] = {"rows": len(rows), "max_new_tokens": length, "decoding": "greedy"}
    return report


def model_tokens(answered: dict) -> dict:
    counts = answered["new_tokens"]
    return {"mean": sum(counts) / max(len(counts), 1), "answers_without": sum(n == 0 for n in counts)}


def deploy(params: Params, paths: Paths, outputs: atomic.Outputs) -> None:
    g = params.profile.generation
    rows = atomic.read_jsonl(paths.val)
    rows_file = paths.val if rows else paths.test  # data.val_fraction 0: timed on the test rows, not scored
    if not rows:
        rows = atomic.read_jsonl(paths.test)
    # the answer length predict chose on the validation split (or params.yaml's, where it chose none)
    predicted = atomic.read_json(paths.predict_metrics)
    max_new_tokens = predicted.get("length", {}).get("max_new_tokens", g.max_new_tokens)
    device = Device(paths, g)
    answered = answer_in_own_process(device, rows_file, max_new_tokens)
    timed_length, timed = timing_run(device, rows, rows_file, (max_new_tokens, answered), g.longest_answer)
    info = atomic.read_json(f"{paths.export}/{EDGE_FILE}")
    ms = [s * 1000 for s in timed["row_seconds"]]
    tokens, seconds = sum(timed["new_tokens"]), sum(timed["row_seconds"])
    report = {
        # not "engine": predict.json's engine key would then clash in `dvc exp show`
        "export_engine": info["engine"],
        "precision": info["precision"],
        "split": Path(rows_file).stem,
        "rows": len(rows),
        "decoding": {
            "num_beams": g.num_beams,
            "do_sample": g.do_sample,
            "repetition_penalty": g.repetition_penalty,
            "no_repeat_ngram_size": g.no_repeat_ngram_size,
            "max_new_tokens": max_new_tokens,
        },
        # what the submitted answers hold of the model: none at all is said plainly
        "submitted_model_tokens": model_tokens(answered),
        # what the speed and memory below were measured on: the model writing, at this length
        "timed": {
            "max_new_tokens": timed_length,
            "rows": len(timed["row_seconds"]),
            "model_tokens": model_tokens(timed),
        },
        "parameters": info["parameters"],
        "export_mb": directory_mb(paths.export),
        "merged_mb": directory_mb(paths.merged),
        "peak_rss_mb": max(answered["peak_rss_mb"], timed["peak_rss_mb"]),
        "ms_per_vignette": {"median": statistics.median(ms) if ms else 0.0, "p90": percentile(ms, 0.9)},
        "tokens_per_s": tokens / seconds if seconds else 0.0,
        "batch_size": 1,
    }
    report["gguf"] = gguf_report(device, rows[:TIMED_ROWS], timed_length, params.export.gguf)
    scored = rows_file == paths.val  # the test rows have no answers to score
    engine = predicted.get("engine", "torch")
    submitted, timed_run = (max_new_tokens, answered), (timed_length, timed)
    compared = compared_answers(device, rows, submitted, timed_run, g.longest_answer, engine) if scored else None
    limits = judge(report, info, rows, compared)
    report["limits"] = {
        name: {"value": value, "limit": limit, "pass": ok} for name, (value, limit, ok) in limits.items()
    }
    report["all_limits_pass"] = all_limits_pass([ok for _, _, ok in limits.values()])
    outputs.write_json(paths.deploy_metrics, report)
    logging.info(
        "%s: %s (timed at %d new tokens, %.1f a row)",
        paths.deploy_metrics,
        ", ".join(f"{name} {VERDICTS[ok]}" for name, (_, _, ok) in limits.items()),
        timed_length,
        report["timed"]["model_tokens"]["mean"],
    )


def all_limits_pass(verdicts: list[bool | None]) -> bool | None:
    """False if a limit failed, else None (not a pass) if one could not be judged, else True."""
    return False if False in verdicts else None if None in verdicts else True


def judge(report: dict, info: dict, rows: list[dict], compared: dict | None) -> dict:
    """Each limit: (value, limit, passed); passed is None where nothing could be judged. ROUGE on the
    compared answers (compared_answers), beside PyTorch's where predict used it."""
    limits = {
        "parameters": (report["parameters"], MAX_PARAMETERS, report["parameters"] <= MAX_PARAMETERS),
        "quantized": (info["precision"], "int8 or int4", info["precision"] in ("int8", "int4")),
        "peak_rss_mb": (report["peak_rss_mb"], MAX_RAM_MB, report["peak_rss_mb"] < MAX_RAM_MB),
        "median_ms_per_vignette": (
            report["ms_per_vignette"]["median"],
            MAX_MS_PER_VIGNETTE,
            report["ms_per_vignette"]["median"] < MAX_MS_PER_VIGNETTE,
        ),
    }
    if compared is None:
        return limits
    part = compared["rows"]
    references = [row[TARGET] for row in part]
    report["rougeL"] = {
        "export": rouge(compared["export"]["texts"], references)["rougeL"],
        "prompt_echo": rouge([prompt_echo(r) for r in part], references)["rougeL"],
        # which answers: the submitted ones, or (they holding no model token) predict's uncut ones
        "compared_on": {
            "answers": compared["answers"],
            "max_new_tokens": compared["max_new_tokens"],
            "rows": len(part),
        },
    }
    if compared["torch"] is None:
        report["rougeL"]["torch"] = None  # predict answered with the export itself: nothing to compare
        return limits
    predictions = read_predictions(compared["torch"], rows)
    torch_answers = [predictions[row[ID]] for row in part]
    torch_l = rouge([p.text for p in torch_answers], references)["rougeL"]
    loss = torch_l - report["rougeL"]["export"]
    report["rougeL"].update(torch=torch_l, loss=loss)
    wrote = any(compared["export"]["new_tokens"]) or any(p.new_tokens for p in torch_answers)
    if not wrote:
        logging.warning("ROUGE-L loss not judged: neither engine wrote a model token in the compared answers")
    limits["rougeL_loss"] = (loss, MAX_ROUGE_L_LOSS, loss <= MAX_ROUGE_L_LOSS if wrote else None)
    return limits


def main(outputs: atomic.Outputs) -> None:
    deploy(load_params(), read_table(), outputs)


if __name__ == "__main__":
    run(main)
