import copy
import dataclasses

import pydantic
import pytest

from core.config import ConfigError, load_params, parse_params


def test_repo_params_load_for_every_profile(repo_params):
    for name in repo_params["models"]:
        raw = copy.deepcopy(repo_params)
        raw["model"] = name
        params = parse_params(raw)
        assert params.profile.key == name
        assert params.profile.training.learning_rate > 0


def test_profile_overrides_apply_on_top_of_shared_sections(repo_params):
    raw = copy.deepcopy(repo_params)
    raw["training"]["batch_size"] = 3
    raw["models"]["qwen3"]["training"] = {"batch_size": 7}
    raw["model"] = "qwen3"
    params = parse_params(raw)
    assert params.profile.training.batch_size == 7
    raw["model"] = "llama32"
    raw["models"]["llama32"].pop("training")
    assert parse_params(raw).profile.training.batch_size == 3


@pytest.mark.faults
@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r.update(model="gpt5"), "model: unknown model 'gpt5'"),
        (lambda r: r["models"]["smollm2"]["lora"].pop("r"), "models.smollm2.lora.r: missing key"),
        (
            lambda r: r["models"]["smollm2"]["lora"].update(r="sixteen"),
            "models.smollm2.lora.r: expected an integer, got 'sixteen'",
        ),
        (
            lambda r: r["models"]["smollm2"]["base"].update(load_in_4bit="yes"),
            "models.smollm2.base.load_in_4bit: expected true or false",
        ),
        (
            lambda r: r["models"]["smollm2"]["base"].update(backend="cuda"),
            "models.smollm2.base.backend: expected one of auto, unsloth, hf",
        ),
        (
            lambda r: r["models"]["smollm2"]["base"].update(family="gpt"),
            "models.smollm2.base.family: expected one of smollm2, qwen3, llama32, got 'gpt'",
        ),
        (lambda r: r["models"]["smollm2"]["training"].update(lr=1), "models.smollm2.training.lr: unknown key"),
        (
            lambda r: r["data"].update(val_fraction=1.5),
            "data.val_fraction: expected a number from 0 (train on every "
            "labelled row) up to but not including 1, got 1.5",
        ),
        (lambda r: r["data"].update(val_fraction=-0.1), "data.val_fraction: expected a number from 0"),
        (lambda r: r["data"].update(folds=1), "data.folds: expected 0 (the val_fraction split) or 2 or more"),
        (lambda r: r["data"].update(folds=5, fold=5), "data.fold: expected a fold from 0 to 4 (folds: 5), got 5"),
        (lambda r: r.pop("generation"), "generation: missing key"),
        (
            lambda r: r["training"].update(weight_decay=True),
            "training (with models.smollm2.training).weight_decay: expected a number, got True",
        ),
        (
            lambda r: r["generation"].update(batch_size="max"),
            "generation (with models.smollm2.generation).batch_size: expected one of auto, got 'max'",
        ),
        (
            lambda r: r["generation"].update(batch_size=0),
            "generation (with models.smollm2.generation).batch_size: expected at least 1, got 0",
        ),
        (lambda r: r["generation"].update(batch_size=2.5), "batch_size: expected an integer or a string, got 2.5"),
        (
            lambda r: r["training"].update(batch_size="auto"),
            "training (with models.smollm2.training).batch_size: expected an integer, got 'auto'",
        ),
        (lambda r: r["models"]["smollm2"]["lora"].update(r=0), "models.smollm2.lora.r: expected at least 1, got 0"),
        (
            lambda r: r["training"].update(warmup_ratio=1),
            "training (with models.smollm2.training).warmup_ratio: expected a number from 0 up to but not including 1",
        ),
        (
            lambda r: r["models"]["smollm2"]["lora"].update(dropout=1.0),
            "models.smollm2.lora.dropout: expected a number from 0 up to but not including 1",
        ),
        (
            lambda r: r["models"]["smollm2"]["training"].update(learning_rate="1e-3"),
            "training (with models.smollm2.training).learning_rate: expected a number, got '1e-3' (YAML 1.1 "
            "reads 1e-3 as text: write it with a dot and a signed exponent, e.g. 1.0e-3)",
        ),
        (
            lambda r: r["models"]["smollm2"]["training"].update(learning_rate=0),
            "training (with models.smollm2.training).learning_rate: expected a number above 0, got 0",
        ),
        (
            lambda r: r["models"]["smollm2"]["training"].update(epochs=0),
            "training (with models.smollm2.training).epochs: expected a number above 0 (or max_steps above 0), got 0",
        ),
        (
            lambda r: r["training"].update(rows_per_pass=0),
            "training (with models.smollm2.training).rows_per_pass: expected at least 1, got 0",
        ),
        (lambda r: r["training"].update(rows_per_pass="all"), "rows_per_pass: expected one of auto, got 'all'"),
        (lambda r: r["training"].update(padding_free="yes"), "padding_free: expected one of auto, got 'yes'"),
        (lambda r: r["generation"].update(static_cache="auto"), "static_cache: expected true or false, got 'auto'"),
    ],
)
def test_bad_params_name_the_key(repo_params, edit, message):
    raw = copy.deepcopy(repo_params)
    edit(raw)
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert message in str(err.value)
    assert str(err.value).startswith("params.yaml: ")


G = "generation (with models.smollm2.generation)"


@pytest.mark.faults
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("num_beams", 0, f"{G}.num_beams: expected at least 1, got 0"),
        ("num_beams", 2.5, f"{G}.num_beams: expected an integer, got 2.5"),
        ("length_penalty", "long", f"{G}.length_penalty: expected a number, got 'long'"),
        ("early_stopping", "yes", f"{G}.early_stopping: expected true or false, got 'yes'"),
        ("min_new_tokens", -1, f"{G}.min_new_tokens: expected at least 0, got -1"),
        (
            "min_new_tokens",
            500,
            f"{G}.min_new_tokens: 500 is more than the longest answer (40 tokens: max_new_tokens and length_grid)",
        ),
        ("mbr_candidates", 1, f"{G}.mbr_candidates: expected 0 (off) or at least 2 candidates"),
        ("mbr_candidates", -2, f"{G}.mbr_candidates: expected at least 0, got -2"),
        ("max_new_tokens", -1, f"{G}.max_new_tokens: expected at least 0, got -1"),
        ("repetition_penalty", 0, f"{G}.repetition_penalty: expected a number above 0, got 0"),
        ("top_p", 1.5, f"{G}.top_p: expected at most 1, got 1.5"),
        ("do_sample", True, f"{G}.num_beams: beam search with do_sample: true is not supported"),
    ],
)
def test_each_generation_key_is_checked_and_named(repo_params, key, value, message):
    raw = copy.deepcopy(repo_params)
    raw["models"]["smollm2"]["generation"][key] = value
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert message in str(err.value)


def test_new_generation_keys_are_accepted_shared_and_per_profile(repo_params):
    raw = copy.deepcopy(repo_params)
    raw["generation"].update(length_penalty=0.8, early_stopping=True, min_new_tokens=20)
    raw["models"]["smollm2"]["generation"].update(num_beams=6, mbr_candidates=4)
    g = parse_params(raw).profile.generation
    assert (g.num_beams, g.length_penalty, g.early_stopping, g.min_new_tokens, g.mbr_candidates) == (
        6,
        0.8,
        True,
        20,
        4,
    )
    assert g.sequences_per_row == 6  # 4 candidates from the 6 beams: the cache holds 6 a row
    raw["models"]["smollm2"]["generation"].update(num_beams=1, do_sample=True, mbr_candidates=5)
    assert parse_params(raw).profile.generation.sequences_per_row == 5  # 5 samples a row


def test_every_profile_spells_out_each_key_its_stages_track(repo_params):
    """dvc.yaml lists groups of models.${model} (its base model, lora, training, generation): a profile
    without one would stop DVC."""
    import re

    from tests.checkpoints import REPO

    tracked = set(re.findall(r"models\.\$\{model\}\.(\w+)", (REPO / "dvc.yaml").read_text()))
    assert tracked == {"base", "generation", "lora", "training"}
    for name, profile in repo_params["models"].items():
        assert tracked <= set(profile), (name, tracked - set(profile))


def test_generation_batch_size_takes_a_number_or_auto(repo_params):
    raw = copy.deepcopy(repo_params)
    raw["models"]["smollm2"]["generation"]["batch_size"] = "auto"
    assert parse_params(raw).profile.generation.batch_size == "auto"
    raw["models"]["smollm2"]["generation"]["batch_size"] = 3
    assert parse_params(raw).profile.generation.batch_size == 3


def test_rows_per_pass_keeps_the_effective_batch(monkeypatch):
    """(rows a pass, passes a step) for batch_size x grad_accum on 1 or 2 processes."""
    from core.distributed import passes

    assert passes(8, 2, "auto", on_gpu=True) == (16, 1)  # a GPU: the whole update in one pass
    assert passes(8, 2, "auto", on_gpu=False) == (8, 2)  # a CPU: as written
    assert passes(8, 2, 4, on_gpu=True) == (4, 4)
    with pytest.raises(ConfigError, match=r"rows_per_pass=5 does not divide the effective batch of 16 rows"):
        passes(8, 2, 5, on_gpu=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert passes(8, 2, "auto", on_gpu=True) == (8, 1)  # each process its half
    assert passes(8, 2, "auto", on_gpu=False) == (8, 1)
    assert passes(8, 2, 4, on_gpu=True) == (4, 2)
    with pytest.raises(
        ConfigError,
        match=r"does not divide the effective batch of 16 rows \(batch_size x grad_accum\) over 2 processes",
    ):
        passes(8, 2, 16, on_gpu=True)


@pytest.mark.faults
def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


@pytest.mark.faults
def test_a_broken_or_misplaced_params_file_is_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("model: smollm2\ndata:\n  seed: [1\n  val_fraction: 0.2\n")
    with pytest.raises(ConfigError) as err:
        load_params(bad)
    [line] = str(err.value).splitlines()
    assert line.startswith(f"{bad}: not valid YAML at line ") and "column" in line, line
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"folder.yaml: a directory, not the params file$"):
        load_params(folder)


@pytest.mark.faults
def test_every_problem_is_listed_one_line_each(repo_params):
    raw = copy.deepcopy(repo_params)
    raw["models"]["smollm2"]["lora"].update(r=0, alpha=0)
    raw["models"]["smollm2"]["generation"].update(max_new_tokens=0, answer_prefix="none", length_grid=[5])
    raw["models"]["smollm2"]["training"].update(learning_rate="1e-3")
    raw["data"].update(val_fraction=2)
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    lines = str(err.value).splitlines()
    assert sorted(lines) == sorted(
        [
            "params.yaml: data.val_fraction: expected a number from 0 (train on "
            "every labelled row) up to but not including 1, got 2",
            "params.yaml: models.smollm2.lora.r: expected at least 1, got 0",
            "params.yaml: models.smollm2.lora.alpha: expected a number above 0, got 0",
            "params.yaml: generation (with models.smollm2.generation).max_new_tokens: 0 (none of the model's tokens) "
            "leaves an empty answer without answer_prefix: echo",
            "params.yaml: training (with models.smollm2.training).learning_rate: expected a number, got '1e-3' "
            "(YAML 1.1 reads 1e-3 as text: write it with a dot and a signed exponent, e.g. 1.0e-3)",
        ]
    ), lines


@pytest.mark.faults
def test_an_unknown_profile_names_the_known_ones(repo_params):
    raw = copy.deepcopy(repo_params)
    raw["model"] = "gpt5"
    with pytest.raises(
        ConfigError,
        match=r"^params.yaml: model: unknown model 'gpt5'; the profiles under models: are smollm2, qwen3, llama32$",
    ):
        parse_params(raw)


def test_the_families_params_yaml_accepts_are_those_the_code_defines():
    from core.config import FAMILY_NAMES
    from core.models.families import FAMILIES

    assert FAMILY_NAMES == tuple(FAMILIES)


def test_a_profiles_overrides_are_merged_over_the_shared_section_and_checked_as_one(repo_params):
    from core.config import TrainingConfig, merge_overrides

    merged = merge_overrides(repo_params["training"], {"epochs": 3}, TrainingConfig, "training", "models.x.training")
    assert merged.epochs == 3 and merged.learning_rate == repo_params["training"]["learning_rate"]
    with pytest.raises(ConfigError, match=r"^models.x.training.lr: unknown key \(it must be a key of training\)$"):
        merge_overrides(repo_params["training"], {"lr": 1}, TrainingConfig, "training", "models.x.training")
    with pytest.raises(ConfigError, match=r"^training \(with m.x\).epochs: expected a number above 0"):
        merge_overrides(repo_params["training"], {"epochs": 0, "max_steps": -1}, TrainingConfig, "training", "m.x")


def test_a_derived_setting_is_checked_as_params_yaml_is(repo_params):
    """A setting the code derives (the chosen answer length, ask's --max-new-tokens) breaks no rule either: one
    line naming what derived it and the key."""
    from core.config import derive

    generation = parse_params(repo_params).profile.generation
    assert derive(generation, "ask --max-new-tokens", max_new_tokens=0).max_new_tokens == 0  # the prefix alone
    without_prefix = derive(generation, "test", answer_prefix="none", length_grid=[5])
    with pytest.raises(ConfigError) as err:
        derive(without_prefix, "ask --max-new-tokens", max_new_tokens=0)
    assert str(err.value) == (
        "ask --max-new-tokens: max_new_tokens: 0 (none of the model's tokens) leaves an empty answer without "
        "answer_prefix: echo"
    )
    with pytest.raises(ConfigError, match=r"^the length chosen on validation: max_new_tokens: expected at least 0"):
        derive(generation, "the length chosen on validation", max_new_tokens=-3)
    with pytest.raises(pydantic.ValidationError):  # replace() itself validates: nothing derived goes unchecked
        dataclasses.replace(generation, top_p=2.0)
