"""What fine-tuning needs around the trainer: examples that fit the window, guards and records.

- `fit_example`: the policy for a row longer than max_seq_length (cut the prompt's middle,
  keep the whole answer and its end-of-turn token; drop the row if too little prompt is left).
- `divergence_guard`: stop at the first loss or gradient norm that is not finite.
- `fit`: train from the last checkpoint if there is one; `RunClock`: the whole run's wall-clock time.
- `write_training_log`: the DVCLive log, written from the trainer's history at the true steps.
- `BestEpoch`: the trainable weights of the epoch with the lowest validation loss, put back at the end.

transformers is imported inside functions (Unsloth must be imported before it; see core/models/base.py).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from core import atomic
from core.errors import DiskFullError, UserError
from core.prompts import cut_middle, shortest_prompt

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value the loss skips
CLOCK_FILE = "run_clock.json"  # written into each checkpoint directory
BEST_FILE = "best_epoch.pt"  # the best epoch's trainable weights, in the run directory (for a resumed run)


class TrainingDiverged(UserError, RuntimeError):
    """The loss or the gradient norm stopped being a finite number."""


def fit_example(prompt_ids: list[int], answer_ids: list[int], max_length: int) -> list[int] | None:
    """The prompt ids to train on, so that prompt + answer fit in `max_length` tokens; None
    drops the row.

    The answer and its end-of-turn token are what the loss learns, so they are kept whole. A
    prompt that does not fit loses tokens from its middle: its start (the system prompt, the
    nurse's background) and its end (the question, the assistant's header) stay. A row whose
    answer leaves less than a quarter of the window to the prompt is dropped: a prompt cut that
    far no longer says what the answer answers.
    """
    room = max_length - len(answer_ids)
    if len(prompt_ids) > room and room < shortest_prompt(max_length):
        return None
    return cut_middle(prompt_ids, room)


@dataclass
class TrainingExamples:
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    prompt_cut: list[str] = field(default_factory=list)  # ids of rows trained on with the prompt's middle cut
    dropped: list[str] = field(default_factory=list)  # ids of rows left out: the answer alone nearly fills the window

    def add(self, row_id: str, prompt_ids: list[int], answer_ids: list[int], max_length: int) -> None:
        fitted = fit_example(prompt_ids, answer_ids, max_length)
        if fitted is None:
            self.dropped.append(row_id)
            return
        if len(fitted) < len(prompt_ids):
            self.prompt_cut.append(row_id)
        self.input_ids.append(fitted + answer_ids)
        self.labels.append([IGNORE_INDEX] * len(fitted) + answer_ids)

    @property
    def n_tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)

    def as_dataset(self):
        from datasets import Dataset

        return Dataset.from_dict({"input_ids": self.input_ids, "labels": self.labels})


def divergence_guard(learning_rate: float):
    """A trainer callback that stops training at the first logged loss or gradient norm that
    is not finite: the LoRA weights are NaN from then on, and an adapter of NaNs would pass
    through predict as empty answers instead of failing here."""
    from transformers import TrainerCallback

    class StopWhenNotFinite(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm", "eval_loss"):
                value = (logs or {}).get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    raise TrainingDiverged(
                        f"training diverged at step {state.global_step}: {key} is {value}; nothing was saved. "
                        f"Lower the learning rate (now {learning_rate:g}) or check the data and the dtype"
                    )

    return StopWhenNotFinite()


def trainer_arguments(
    output_dir, settings, *, evaluate: bool, dtype, max_length: int | None, rows_per_pass: int, grad_accum: int
) -> dict:
    """The trainer settings SFT and DPO share, from their own params section (`settings`: the
    profile's `training` or `align`, which name the same fields): the optimiser and its schedule,
    logging every value (NaN included, for the guard), resumable checkpoints, one evaluation an
    epoch, seeds, the device and its dtype."""
    import torch

    on_gpu = torch.cuda.is_available()
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=rows_per_pass,
        # the trainer averages the batches' mean losses: a fixed eval batch keeps val_loss
        # comparable whatever rows_per_pass is
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a fraction of all steps
        weight_decay=settings.weight_decay,
        optim=settings.optimizer,
        logging_steps=settings.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # the filter logs a NaN loss as a number; the guard must see it
        # "epoch": a checkpoint at each epoch's end, so that a default run (18 steps on the sample) has one
        **(
            {"save_strategy": "epoch"}
            if settings.save_steps == "epoch"
            else {"save_strategy": "steps", "save_steps": settings.save_steps}
        ),
        save_total_limit=1,
        eval_strategy="epoch" if evaluate else "no",
        seed=settings.seed,
        data_seed=settings.seed,
        report_to="none",
        use_cpu=not on_gpu,
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        max_length=max_length,
        gradient_checkpointing=False,  # done by the backend when LoRA is attached
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def resume_point(output_dir) -> tuple[str | None, int]:
    """The last checkpoint in `output_dir` to resume from (None: start afresh) and its step."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
    return last, int(Path(last).name.rsplit("-", 1)[1]) if last else 0


@dataclass
class Fit:
    """A finished `trainer.train()`: its result, the seconds of the whole run (the part before a
    resume included) and the step it resumed from (0: a fresh start)."""

    result: object
    seconds: float
    resumed_from_step: int


def fit(trainer, output_dir, resume: tuple[str | None, int] | None = None) -> Fit:
    """Train, from the last checkpoint in `output_dir` if there is one (`resume`: resume_point's
    answer when the caller needed it first), timing the whole run across resumes."""
    checkpoint, resumed_from_step = resume or resume_point(output_dir)
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    clock = run_clock(checkpoint)
    trainer.add_callback(clock)
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    except RuntimeError as err:
        _forget_if_no_checkpoint(output_dir)
        # torch.save on a full disk says only "[enforce fail at inline_container.cc] unexpected pos": the
        # checkpoint directory's disk says why
        if _nearly_full(Path(output_dir)):
            raise DiskFullError(
                f"{output_dir}: a checkpoint could not be written, no space left on its disk; free some and run again"
            ) from err
        raise
    except BaseException:
        _forget_if_no_checkpoint(output_dir)
        raise
    return Fit(result, clock.seconds, resumed_from_step)


def _nearly_full(path: Path) -> bool:
    """Less than 1 MiB free on the disk that holds `path` (or its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free < 1 << 20


def _forget_if_no_checkpoint(output_dir) -> None:
    """A run stopped before its first checkpoint leaves nothing to resume from: its directory goes, rather
    than pile up empty under models/checkpoints."""
    if not any(Path(output_dir).glob("checkpoint-*")):
        shutil.rmtree(output_dir, ignore_errors=True)


def run_clock(resume_from: str | None):
    """A trainer callback that times the whole run, not only the part since a resume.

    Each checkpoint records the seconds spent up to it; a run resumed from that checkpoint
    starts from that figure. Work done after the checkpoint by the interrupted run is redone,
    and counted once, when it is redone.
    """
    from transformers import TrainerCallback

    class RunClock(TrainerCallback):
        def __init__(self) -> None:
            clock = Path(resume_from or "") / CLOCK_FILE
            self.before = atomic.read_json(clock)["seconds"] if resume_from and clock.exists() else 0.0
            self.started = time.perf_counter()

        @property
        def seconds(self) -> float:
            return self.before + time.perf_counter() - self.started

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_save(self, args, state, control, **kwargs):
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and checkpoint.is_dir():
                atomic.write_json(checkpoint / CLOCK_FILE, {"seconds": self.seconds, "step": state.global_step})

    return RunClock()


def write_training_log(path: str | Path, history: list[dict], always: tuple[str, ...] = ()) -> None:
    """Write the DVCLive log of a training run (`path`, replaced whole) from the trainer's log
    history, each value at the optimiser step it was logged at.

    Written once, at the end: a resumed run's history holds the entries saved with its
    checkpoint and those logged since, so the curve is continuous at the true steps, without
    the entries an interrupted run logged after its last checkpoint. (DVCLive's own callback
    counts log calls, not steps, and starts from 0 again after a resume.)

    The metrics named in `always` (say "eval/rewards/margins") get a file even when nothing logged
    them, a header without rows: dvc.yaml plots them, and `dvc plots show` warns about a file it
    cannot find but draws nothing for an empty one.
    """
    from dvclive.plots import Metric
    from dvclive.utils import standardize_metric_name

    from dvclive import Live

    # Live is pointed outside the repository: inside `dvc exp run` it git-adds the untracked
    # files of its directory, and the finished log is copied into place in one rename.
    scratch = Path(tempfile.mkdtemp(prefix="kcr-dvclive-"))
    try:
        with Live(str(scratch / "log"), save_dvc_exp=False, dvcyaml=None, report=None) as live:
            for entry in history:
                live.step = int(entry["step"])
                for key, value in entry.items():
                    if key != "step" and Metric.could_log(value):
                        live.log_metric(standardize_metric_name(key, "dvclive.huggingface"), value)
        for name in always:
            tsv = scratch / "log" / "plots" / "metrics" / f"{name}.tsv"
            if not tsv.exists():
                tsv.parent.mkdir(parents=True, exist_ok=True)
                tsv.write_text(f"step\t{name.rsplit('/', 1)[-1]}\n", encoding="utf-8")
        with atomic.atomic_path(path) as tmp:
            shutil.copytree(scratch / "log", tmp)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def best_epoch(model, output_dir, resumed_from_step: int):
    """A trainer callback that keeps the trainable (LoRA) weights of the evaluation with the
    lowest validation loss; `restore()` puts them back into `model` after training.

    On real rows the validation loss bottoms out after 2-3 epochs and then climbs while the
    training loss still falls (docs/quality.md): the last epoch is rarely the best one. The best
    weights are also written to the run directory, so that a run resumed from a checkpoint keeps
    the best of the part before the interruption (only if that part reached the checkpoint)."""
    import torch
    from transformers import TrainerCallback

    saved = Path(output_dir) / BEST_FILE

    class BestEpoch(TrainerCallback):
        def __init__(self) -> None:
            self.best: dict | None = None  # val_loss, epoch, step of the best evaluation so far
            self.weights: dict | None = None
            self.losses: list[dict] = []  # every evaluation: epoch, step, val_loss
            if resumed_from_step and saved.exists():
                record = torch.load(saved, map_location="cpu", weights_only=True)
                if record["best"]["step"] <= resumed_from_step:
                    self.best, self.weights = record["best"], record["weights"]

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            loss = (metrics or {}).get("eval_loss")
            if not isinstance(loss, (int, float)) or not math.isfinite(loss):
                return
            current = {"epoch": round(float(state.epoch or 0), 2), "step": state.global_step, "val_loss": float(loss)}
            self.losses.append(current)
            if self.best is not None and loss >= self.best["val_loss"]:
                return
            self.best = current
            self.weights = {
                name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad
            }
            if state.is_world_process_zero:
                saved.parent.mkdir(parents=True, exist_ok=True)
                # atomic: resuming reads this file, and a crash mid-write must leave the last good one
                with atomic.atomic_path(saved) as target:
                    torch.save({"best": self.best, "weights": self.weights}, target)

        def restore(self, final_step: int) -> bool:
            """Put the best weights back if they are not the final ones; whether it did."""
            if self.best is None or self.best["step"] == final_step:
                return False
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in self.weights:
                        p.copy_(self.weights[name].to(p.device, p.dtype))
            return True

    return BestEpoch()
