"""Chat templates for SFT: the tokenizer's own, or a named Jinja template from a small registry.

Contract: `template_for(tokenizer, name)` returns the Jinja string that renders every training prompt. Whoever
saves the model must set `tokenizer.chat_template` to that string before `save_pretrained`, so that plain
`transformers` code (`AutoTokenizer.from_pretrained(run/model).apply_chat_template(messages)`) reproduces the
training prompt exactly. Templates are rendered only through `tokenizer.apply_chat_template`; this module holds
Jinja text, never hand-built prompt strings."""
from __future__ import annotations

from typing import Optional

from tuneforge.errors import ConfigError

# The de-facto ChatML template (as in transformers' docs and many ChatML models); no default system prompt.
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
          " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Meta Llama-3-Instruct's template (content trimmed, bos before the first message).
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")

# HuggingFaceH4 Zephyr's template: role tags are plain text, each turn ends with the eos token.
ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
          "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}"
          "\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
          "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
          "{% endfor %}")

# Alpaca-style headings for base models without chat tokens: answers end with the eos token.
PLAIN = ("{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
         "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
         "{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}"
         "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}")

TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "zephyr": ZEPHYR, "plain": PLAIN}
# Tokens a template writes that must be single tokens of the vocabulary (else they are split into pieces and the
# model never sees one stop token). "eos" stands for the tokenizer's eos token, which the template reads.
REQUIRED_TOKENS = {"chatml": ("<|im_start|>", "<|im_end|>"),
                   "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                   "zephyr": ("eos",), "plain": ("eos",)}


def _missing_tokens(tokenizer, name: str) -> list[str]:
    added = tokenizer.get_added_vocab()
    missing = []
    for token in REQUIRED_TOKENS[name]:
        if token == "eos":
            if not tokenizer.eos_token:
                missing.append("an eos token")
        elif token not in added:
            missing.append(token)
    return missing


def template_for(tokenizer, name: Optional[str]) -> str:
    """The Jinja chat template for data.chat_template: None = the tokenizer's own; a registry name; or a Jinja
    string (anything containing '{%'). Errors name the key and the fix."""
    if name is None:
        try:
            return tokenizer.get_chat_template()
        except ValueError:  # transformers: "Cannot use chat template functions because tokenizer.chat_template..."
            raise ConfigError(f"data.chat_template: the model's tokenizer has no chat template; set "
                              f"data.chat_template to one of: {', '.join(TEMPLATES)}") from None
    if "{%" in name:
        return name
    if name not in TEMPLATES:
        raise ConfigError(f"data.chat_template: unknown template '{name}'; choose one of: {', '.join(TEMPLATES)}, "
                          "leave it unset for the tokenizer's own, or give a Jinja string")
    missing = _missing_tokens(tokenizer, name)
    if missing:
        raise ConfigError(f"data.chat_template: '{name}' needs {', '.join(missing)} as single tokens, and this "
                          "tokenizer has none; use the tokenizer's own template (leave data.chat_template unset) "
                          "or a template whose tokens it has (plain needs only an eos token)")
    return TEMPLATES[name]


def end_of_turn_strings(tokenizer) -> tuple[str, ...]:
    """Special tokens that can close a turn (the eos, <|im_end|>, <|eot_id|>, ...): every added special token."""
    specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    specials.update(s for s in (tokenizer.eos_token,) if s)
    return tuple(sorted(specials, key=len, reverse=True))
