import copy

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


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r.update(model="gpt5"), "model: unknown model 'gpt5'"),
        (lambda r: r["models"]["smollm2"]["lora"].pop("r"), "models.smollm2.lora.r: missing key"),
        (lambda r: r["models"]["smollm2"]["lora"].update(r="sixteen"), "models.smollm2.lora.r: expected an integer, got 'sixteen'"),
        (lambda r: r["models"]["smollm2"].update(load_in_4bit="yes"), "models.smollm2.load_in_4bit: expected true or false"),
        (lambda r: r["models"]["smollm2"].update(backend="cuda"), "models.smollm2.backend: expected one of auto, unsloth, hf"),
        (lambda r: r["models"]["smollm2"]["training"].update(lr=1), "models.smollm2.training.lr: unknown key"),
        (lambda r: r["data"].update(val_fraction=1.5), "data.val_fraction: expected a number between 0 and 1"),
        (lambda r: r.pop("generation"), "generation: missing key"),
        (lambda r: r["training"].update(weight_decay=True), "training (with models.smollm2.training).weight_decay: expected a number, got True"),
        (lambda r: r["generation"].update(batch_size="max"), "generation (with models.smollm2.generation).batch_size: expected one of auto, got 'max'"),
        (lambda r: r["generation"].update(batch_size=0), "generation (with models.smollm2.generation).batch_size: expected at least 1, got 0"),
        (lambda r: r["generation"].update(batch_size=2.5), "batch_size: expected an integer or a string, got 2.5"),
        (lambda r: r["training"].update(batch_size="auto"), "training (with models.smollm2.training).batch_size: expected an integer, got 'auto'"),
    ],
)
def test_bad_params_name_the_key(repo_params, edit, message):
    raw = copy.deepcopy(repo_params)
    edit(raw)
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert message in str(err.value)
    assert str(err.value).startswith("params.yaml: ")


def test_generation_batch_size_takes_a_number_or_auto(repo_params):
    raw = copy.deepcopy(repo_params)
    raw["models"]["smollm2"]["generation"]["batch_size"] = "auto"
    assert parse_params(raw).profile.generation.batch_size == "auto"
    raw["models"]["smollm2"]["generation"]["batch_size"] = 3
    assert parse_params(raw).profile.generation.batch_size == 3


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
