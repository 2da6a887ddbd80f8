"""An Ollama Modelfile for the GGUF file: our chat template in Ollama's Go template syntax, the system
prompt, the stop token, the context window, greedy decoding.

The Go template is derived from our Jinja template, not written beside it: each turn is rendered alone
with a marker for its text, and the marker becomes `{{ .System }}` or `{{ .Prompt }}`. A template edit
in core/models/families.py so reaches the Modelfile, and `render_go` (the subset of Go templates the
result uses) lets the tests hold the two to the same bytes.
"""

from __future__ import annotations

import re

from core.errors import UserError
from core.prompts import render_chat

_MARK = "\x00{}\x00"


def go_template(template: str) -> str:
    """Ollama's TEMPLATE for our Jinja `template`: a system turn where there is a system prompt, the user's
    turn, and the assistant's opening (Qwen3's empty think block included)."""

    def turn(role: str) -> str:
        rendered = render_chat(template, [{"role": role, "content": _MARK.format(role)}], add_generation_prompt=False)
        return rendered[len(head) :]

    head = render_chat(template, [], add_generation_prompt=False)  # what precedes every turn (Llama's BOS)
    opening = render_chat(template, [], add_generation_prompt=True)[len(head) :]
    system = turn("system").replace(_MARK.format("system"), "{{ .System }}")
    user = turn("user").replace(_MARK.format("user"), "{{ .Prompt }}")
    return f"{head}{{{{ if .System }}}}{system}{{{{ end }}}}{{{{ if .Prompt }}}}{user}{{{{ end }}}}{opening}"


def render_go(template: str, system: str, prompt: str) -> str:
    """`template` (go_template's subset: `{{ if .X }}...{{ end }}` and `{{ .X }}`) as Ollama renders it."""
    values = {"System": system, "Prompt": prompt}
    text = re.sub(
        r"\{\{ if \.(\w+) \}\}(.*?)\{\{ end \}\}",
        lambda m: m.group(2) if values[m.group(1)] else "",
        template,
        flags=re.S,
    )
    return re.sub(r"\{\{ \.(\w+) \}\}", lambda m: values[m.group(1)], text)


def _quoted(text: str, where: str) -> str:
    if '"""' in text:
        raise UserError(f'{where}: holds """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile(gguf_name: str, template: str, system: str, end_of_turn: str, context: int) -> str:
    """The Modelfile text: greedy (temperature 0) to the end of turn, as the profiles decode by default.
    Sampling, lengths and the repetition rules stay out: they are predict's settings (a change to them would
    rewrite the GGUF stage's outputs), and Ollama's repeat penalty counts the prompt's tokens, ours does not."""
    lines = [
        f"FROM ./{gguf_name}",
        f"TEMPLATE {_quoted(go_template(template), 'the chat template')}",
        f"SYSTEM {_quoted(system, 'params.yaml: prompt.system')}",
        f'PARAMETER stop "{end_of_turn}"',
        f"PARAMETER num_ctx {context}",
        "PARAMETER temperature 0",
    ]
    return "\n".join(lines) + "\n"
