"""An Ollama Modelfile for the GGUF file: our chat template in Ollama's Go template syntax, the system
prompt, the stop token and the profile's decoding where Ollama has the setting.

The Go template is derived from our Jinja template, not written beside it: each turn is rendered alone
with a marker for its text, and the marker becomes `{{ .System }}` or `{{ .Prompt }}`. A template edit
in core/models/families.py so reaches the Modelfile, and `render_go` (the subset of Go templates the
result uses) lets the tests hold the two to the same bytes.
"""

from __future__ import annotations

import re

from core.config import GenerationConfig
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


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ValueError('a Modelfile value cannot hold """')
    return f'"""{text}"""'


def modelfile(
    gguf_name: str, template: str, system: str, end_of_turn: str, generation: GenerationConfig, context: int
) -> str:
    """The Modelfile text. Ollama's repeat_penalty counts the prompt's tokens (ours counts the answer's
    only) and it has no beam search: greedy, and neither repetition rule, is what it is given."""
    lines = [
        f"FROM ./{gguf_name}",
        f"TEMPLATE {_quoted(go_template(template))}",
        f"SYSTEM {_quoted(system)}",
        f'PARAMETER stop "{end_of_turn}"',
        f"PARAMETER num_ctx {context}",
        f"PARAMETER num_predict {generation.longest_answer or generation.max_new_tokens}",
    ]
    if generation.do_sample:
        lines += [f"PARAMETER temperature {generation.temperature}", f"PARAMETER top_p {generation.top_p}"]
        lines.append(f"PARAMETER seed {generation.seed}")
    else:
        lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"
