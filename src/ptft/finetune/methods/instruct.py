"""``instruct``: every parameter trains, on a chat dataset.

The loss is on the assistant turns only: :func:`ptft.finetune.batching.encode_examples` labels
every other token as ignored, so the method itself needs nothing beyond the defaults.
"""

from __future__ import annotations

from ptft.finetune.methods.base import Method

# The Tulu v2 format of ptft.data.prompts.chat_segments as a chat template: each turn's content
# stripped on its own tagged line, EOS after each assistant reply (where training appends it).
TULU_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + (message['content'] | trim) }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


class Instruct(Method):
    name = "instruct"
    task_kinds = ("chat",)

    def save(self, path, model, tokenizer, cfg: dict, base_checkpoint) -> None:
        """Saved with the chat template training used, so that ``apply_chat_template`` on the saved
        tokenizer (lm-eval's ``--apply_chat_template``, a chat server) writes what the model learned.

        A tokenizer without a template was trained on the Tulu v2 format
        (:func:`ptft.finetune.batching.segments`); it gets that format as its template.
        """
        if getattr(tokenizer, "chat_template", None):
            return super().save(path, model, tokenizer, cfg, base_checkpoint)
        tokenizer.chat_template = TULU_CHAT_TEMPLATE
        try:
            super().save(path, model, tokenizer, cfg, base_checkpoint)
        finally:
            tokenizer.chat_template = None
