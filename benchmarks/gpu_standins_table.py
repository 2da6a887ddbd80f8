"""The table of benchmarks/gpu_standins.sh: per profile, mode and stage, the wall time, peak GPU and
resident memory (benchmarks/gpu_stage.py's records) and what the stage reported of its own work.

    python -m benchmarks.gpu_standins_table OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STAGES = ("prepare", "finetune", "align", "export", "predict", "evaluate", "submit", "deploy")


def stage_notes(stage: str, metrics: dict) -> str:
    """What a stage's own metrics say of its work, in a few words."""
    if stage == "finetune" and "finetune" in metrics:
        m = metrics["finetune"]
        return (
            f"{m.get('steps')} steps ({m.get('backend')}, 4-bit {m.get('load_in_4bit')}), "
            f"{m.get('train_tokens_per_s', 0):,.0f} train tokens/s, val loss {m.get('val_loss', float('nan')):.2f}"
        )
    if stage == "predict" and "predict" in metrics:
        m = metrics["predict"]
        return (
            "; ".join(
                f"{split} {m[split]['rows']} rows at batch {m[split]['batch_size']}, {m[split]['tokens_per_s']:,.0f} "
                f"answer tokens/s"
                for split in ("val", "test")
                if split in m
            )
            + f"; length chosen {m.get('length', {}).get('max_new_tokens')}"
        )
    if stage == "submit":
        return f"{metrics.get('submission_rows', 0)} rows submitted"
    if stage == "deploy" and "deploy" in metrics:
        m = metrics["deploy"]
        return (
            f"{m['parameters'] / 1e9:.2f}B parameters, export {m['export_mb']:,.0f} MB, "
            f"{m['ms_per_vignette']['median']:,.0f} ms a vignette at {m['decoding']['max_new_tokens']} tokens, "
            f"limits passed: {', '.join(k for k, v in m['limits'].items() if v['pass']) or 'none'}"
        )
    if stage == "evaluate" and "eval" in metrics:
        m = metrics["eval"]
        model, echo = (m.get(name, {}).get("rougeL", float("nan")) for name in ("model", "prompt_echo"))
        return f"ROUGE-L {model:.3f} (random weights), echo {echo:.3f}"
    return ""


def table(out: Path) -> str:
    lines = [
        "| profile | mode | stage | wall s | peak GPU GiB (allocated / "
        "reserved) | peak RSS MB | the stage's own record |",
        "|---|---|---|---|---|---|---|",
    ]
    for metrics_file in sorted(out.glob("*-metrics.json")):
        family, mode = metrics_file.name.removesuffix("-metrics.json").split("-", 1)
        metrics = json.loads(metrics_file.read_text())
        for stage in STAGES:
            record_file = out / f"{family}-{mode}-{stage}.json"
            if not record_file.exists():
                lines.append(f"| {family} | {mode} | {stage} | not run | | | |")
                continue
            r = json.loads(record_file.read_text())
            status = f"{r['seconds']:.1f}" + ("" if r["exit"] == 0 else f" (exit {r['exit']})")
            lines.append(
                f"| {family} | {mode} | {stage} | {status} | "
                f"{r['peak_gpu_allocated_gb']:.2f} / {r['peak_gpu_reserved_gb']:.2f} "
                f"| {r['peak_rss_mb']:,.0f} | {stage_notes(stage, metrics)} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
