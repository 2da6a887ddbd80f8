"""Export for the edge: the adapter merged into its base model, then converted and quantized for
ONNX Runtime GenAI (core/export/runtime.py runs it).

Why ONNX Runtime GenAI (measured on a 2-core CPU, docs/deploy.md): it installs from PyPI as a
wheel with no compiler, runs Llama- and Qwen3-shaped models, quantizes weights to int8 or int4,
and answered 4x faster than PyTorch at batch 1 where CTranslate2 managed about 2x;
llama.cpp's Python binding builds llama.cpp from source on install.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path

from core import atomic
from core.config import ModelProfile
from core.errors import UserError
from core.export.runtime import EDGE_FILE, adapter_digest

log = logging.getLogger(__name__)

ENGINE = "onnxruntime-genai"


class ExportError(UserError, RuntimeError):
    """The conversion to the exported engine failed."""


def export_profile(profile: ModelProfile) -> ModelProfile:
    """The profile to merge with: full-precision weights through transformers + peft, whatever the
    profile trains with (a 4-bit base cannot be merged into exactly; the adapter is merged into
    the full-precision base, as QLoRA adapters usually are)."""
    return profile.with_base(backend="hf", dtype="float32", load_in_4bit=False)


def merge(model, adapter_dir: str | Path, merged_dir: str | Path) -> int:
    """Load `adapter_dir` onto the model's base, fold it into the weights and save the result as a
    standalone checkpoint (safetensors, tokenizer, our chat template). Returns the parameter count."""
    model.load_adapter(adapter_dir)
    merged = model.model.merge_and_unload()
    model.model = merged
    with atomic.atomic_path(merged_dir) as tmp:
        merged.save_pretrained(str(tmp))
        model.tokenizer.save_pretrained(str(tmp))
    return parameter_count(merged)


def parameter_count(model) -> int:
    """A model's parameters, tied input and output embeddings (one tensor) counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@contextlib.contextmanager
def _no_git_here():
    """The builder stamps model.onnx with the git commit of the repository its own files sit in, and
    a virtual environment inside this project's checkout is in this project's repository: every commit
    of ours would change the export's bytes (and rerun what follows it). With git pointed nowhere it
    falls back to the commit recorded in its own package."""
    before = os.environ.get("GIT_DIR")
    os.environ["GIT_DIR"] = os.devnull
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("GIT_DIR", None)
        else:
            os.environ["GIT_DIR"] = before


# The builder's libraries log through `logging`, which the stage's handler prints: about 500 INFO
# lines of the quantizer a node each, "INFO absl: Using default tokenizer.", and "ERROR
# onnxruntime.quantization.matmul_nbits_quantizer: Gather only supports 4 bits quantization." in
# every int8 export that succeeds (the embedding's Gather stays unquantized, as intended). They
# are kept at DEBUG under this module's logger: KCR_LOG_LEVEL=DEBUG shows them.
BUILDER_LOGGERS = ("onnxruntime", "onnx", "onnx_ir", "onnxscript", "absl")


class _ToDebug(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        log.debug("%s %s: %s", record.levelname, record.name, record.getMessage())


@contextlib.contextmanager
def _builder_logs_at_debug():
    handler = _ToDebug()
    loggers = [logging.getLogger(name) for name in BUILDER_LOGGERS]
    saved = [(logger.propagate, logger.handlers[:]) for logger in loggers]
    for logger in loggers:
        logger.propagate, logger.handlers = False, [handler]
    try:
        yield
    finally:
        for logger, (propagate, handlers) in zip(loggers, saved, strict=True):
            logger.propagate, logger.handlers = propagate, handlers


def _run_builder(merged_dir: str | Path, out_dir: Path, precision: str, cache: str) -> None:
    """ONNX Runtime GenAI's model builder, in this process (torch and transformers are loaded
    already: a second process would spend seconds importing them again), its progress output kept
    out of the stage's log."""
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    chatter = io.StringIO()
    try:
        with (
            contextlib.redirect_stdout(chatter),
            contextlib.redirect_stderr(chatter),
            _no_git_here(),
            _builder_logs_at_debug(),
        ):
            options = parse_extra_options(str(merged_dir), str(merged_dir), str(out_dir), precision, "cpu", cache, [])
            create_model(str(merged_dir), str(merged_dir), str(out_dir), precision, "cpu", cache, **options)
    except Exception as err:  # whatever the builder raises, the stage says it in one line
        last = (str(err).strip().splitlines() or [""])[-1]
        where = atomic.shown(Path(merged_dir))
        raise ExportError(
            f"{where}: the ONNX Runtime GenAI model builder failed: {type(err).__name__}: {last}"
        ) from None


def build_onnx(
    model, merged_dir: str | Path, out_dir: str | Path, precision: str, adapter_dir: str | Path, parameters: int
) -> None:
    """Convert the merged checkpoint with ONNX Runtime GenAI's model builder (weights quantized to
    `precision`) and write edge.json: what the engine needs to prompt the model as training did."""
    tokenizer = model.tokenizer
    end_of_turn_id = tokenizer.convert_tokens_to_ids(model.end_of_turn)
    with atomic.atomic_path(out_dir) as tmp, tempfile.TemporaryDirectory(prefix="ort-build-") as cache:
        log.info("converting %s to ONNX (%s weights)", atomic.shown(Path(merged_dir)), precision)
        _run_builder(merged_dir, tmp, precision, cache)
        config_path = tmp / "genai_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        # stop on the family's end-of-turn token, as the PyTorch path does (the builder takes the
        # checkpoint's eos, which for a chat model may be another token)
        config["model"]["eos_token_id"] = end_of_turn_id
        config["model"]["pad_token_id"] = tokenizer.pad_token_id
        atomic.write_json(config_path, config)
        atomic.write_json(
            tmp / EDGE_FILE,
            {
                "engine": ENGINE,
                "precision": precision,
                "family": model.profile.family,
                "base_model": model.profile.name,
                "parameters": parameters,
                "adapter_digest": adapter_digest(adapter_dir),
                "system_prompt": model.system_prompt,
                "chat_template": model.chat_template,
                "end_of_turn": model.end_of_turn,
                "end_of_turn_id": end_of_turn_id,
                # the window it was tuned in: longer prompts are cut to it
                "max_seq_length": model.profile.max_seq_length,
            },
        )
