"""gguf: the merged model as GGUF files (one a precision of `export.gguf`) with an Ollama Modelfile, for
llama.cpp, Ollama and LM Studio. Each file is read back and checked before any lands: its own chat
template renders training's prompt byte for byte, and its stop token is the end of turn."""

import logging
from pathlib import Path

from core import atomic
from core.config import Params, load_params
from core.errors import UserError
from core.export.gguf_file import chat_from_merged, write_gguf
from core.export.gguf_read import problems
from core.export.modelfile import modelfile
from core.paths import Paths, read_table
from core.prompts import chat_messages, render_chat
from core.resources import directory_mb
from stages import run

# the user turn the files' templates are checked on (any text: the template is what is compared)
EXAMPLE_USER = "A nurse with 5 years of experience in a level 3 facility: a child of 4 with fever 39.8 and cough."


def gguf_files(params: Params, paths: Paths, outputs: atomic.Outputs) -> None:
    # the template, end of turn and pad the export saved with the merged model (core/export/build.py: the
    # family's, as training used them)
    chat = chat_from_merged(paths.merged, params.prompt.system, params.profile.family)
    if not chat.template or chat.stop_id is None:
        raise UserError(f"{paths.merged}: no chat template or end-of-turn (eos) token; rebuild it: dvc repro export")
    messages = chat_messages(params.prompt.system, EXAMPLE_USER)
    expected = render_chat(chat.template, messages)
    folder = outputs.path(paths.gguf)
    with atomic.naming_a_full_disk(Path(paths.gguf)):  # the writer's own write() errors name no file
        folder.mkdir()
        for precision in params.export.gguf:
            path = folder / f"model-{precision}.gguf"
            write_gguf(paths.merged, path, precision, chat)
            found = problems(path, messages, expected, chat.stop_id)
            if found:
                raise UserError("\n".join(found))
        if params.export.gguf:  # for the last precision listed
            name = f"model-{params.export.gguf[-1]}.gguf"
            context = params.profile.max_seq_length
            text = modelfile(name, chat.template, params.prompt.system, chat.stop_token, context)
            (folder / "Modelfile").write_text(text, encoding="utf-8")
    logging.info(
        "%s: %s (%.0f MB)", paths.gguf, ", ".join(sorted(p.name for p in folder.iterdir())), directory_mb(folder)
    )


def main(outputs: atomic.Outputs) -> None:
    gguf_files(load_params(), read_table(), outputs)


if __name__ == "__main__":
    run(main)
