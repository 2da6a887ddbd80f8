"""The experiments table, from `dvc exp show --json`: one row per commit and experiment, with the
columns worth comparing (the selected model's settings resolved, not every profile's).
Used by the notebook and by the tests; it reads DVC's output and runs nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from core.config import ConfigError, parse_params

COLUMNS = [
    "experiment",
    "rev",
    "commit",
    "model",
    "checkpoint",
    "backend",
    "lora_r",
    "learning_rate",
    "epochs",
    "max_steps",
    "effective_batch",
    "align",
    "train_loss",
    "val_loss",
    "val_rougeL",
    "val_rougeL_low",
    "val_rougeL_high",
    "answer_prefix_rougeL",
    "prompt_echo_rougeL",
    "model_minus_prefix",
    "loop_share",
    "length",
    "dpo_val_reward_accuracy",
    "dpo_val_reward_margin",
    "train_runtime_s",
    "train_tokens_per_s",
    "align_runtime_s",
    "predict_test_s",
]


def exp_show(cwd: str | Path = ".") -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=cwd, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def file_at(rev: str, path: str, cwd: str | Path = ".") -> str | None:
    """`path` as the commit or experiment `rev` recorded it ("workspace": as it is now); None if absent."""
    if rev == "workspace":
        file = Path(cwd) / path
        return file.read_text(encoding="utf-8") if file.exists() else None
    done = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=cwd, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def exp_records(exp_show_json: list[dict]):
    """(name, rev, data) for every commit row and every experiment under it."""
    for commit in exp_show_json:
        yield commit.get("name") or short_rev(commit["rev"]), commit["rev"], commit.get("data") or {}
        for experiment in commit.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                yield rev.get("name") or short_rev(rev["rev"]), rev["rev"], rev.get("data") or {}


def short_rev(rev: str) -> str:
    return rev if rev == "workspace" else rev[:7]


def recorded(data: dict, kind: str, path: str) -> dict:
    return ((data.get(kind) or {}).get(path) or {}).get("data") or {}


def experiments_table(exp_show_json: list[dict]) -> pd.DataFrame:
    rows = []
    for name, rev, data in exp_records(exp_show_json):
        row = {"experiment": name, "rev": short_rev(rev), "commit": rev}
        try:
            params = parse_params(recorded(data, "params", "params.yaml"))
        except ConfigError:
            params = None  # a commit from before params.yaml had its present form
        if params is not None:
            p, t = params.profile, params.profile.training
            row.update(
                model=params.model,
                checkpoint=p.name,
                backend=p.backend,
                lora_r=p.lora.r,
                learning_rate=t.learning_rate,
                epochs=t.epochs,
                max_steps=t.max_steps,
            )
        align = recorded(data, "metrics", "metrics/align.json")
        # SFT alone, or SFT + DPO (the align stage); "sft" too for a commit from before the stage
        row["align"] = "sft+dpo" if align.get("align_method") == "dpo" else "sft"
        dpo = align.get("dpo") or {}
        finetune = recorded(data, "metrics", "metrics/finetune.json")
        evaluation = recorded(data, "metrics", "metrics/eval.json")
        predict = recorded(data, "metrics", "metrics/predict.json")
        row.update(
            effective_batch=finetune.get("effective_batch_size"),
            train_loss=finetune.get("train_loss"),
            val_loss=finetune.get("val_loss"),
            val_rougeL=(evaluation.get("model") or {}).get("rougeL"),
            # its 95 % interval over resampled validation rows (core/metrics/uncertainty.py; none before 2026-12-07)
            val_rougeL_low=(evaluation.get("model") or {}).get("rougeL_low"),
            val_rougeL_high=(evaluation.get("model") or {}).get("rougeL_high"),
            answer_prefix_rougeL=(evaluation.get("answer_prefix") or {}).get("rougeL"),
            prompt_echo_rougeL=(evaluation.get("prompt_echo") or {}).get("rougeL"),
            model_minus_prefix=(evaluation.get("model_minus_prefix") or {}).get("rougeL"),
            loop_share=(evaluation.get("loop_share") or {}).get("model"),
            length=(predict.get("length") or {}).get("max_new_tokens"),
            train_runtime_s=finetune.get("train_runtime_s"),
            train_tokens_per_s=finetune.get("train_tokens_per_s"),
            predict_test_s=(predict.get("test") or {}).get("seconds"),
            dpo_val_reward_accuracy=dpo.get("val_reward_accuracy"),
            dpo_val_reward_margin=dpo.get("val_reward_margin"),
            align_runtime_s=dpo.get("train_runtime_s"),
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)
