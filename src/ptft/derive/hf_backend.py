"""The ``hf`` backend: a local ``transformers`` model, generating in left-padded batches.

``model`` is a checkpoint folder, a checkpoint pointer or a hub id (``org/name`` or
``org/name@revision``, read from the Hugging Face cache under ``HF_HUB_OFFLINE=1``; remote code
is never run), as :func:`ptft.checkpoints.load.load_pretrained` takes them.

Prompts use the tokenizer's chat template; a tokenizer without one gets the Tulu v2 template
(``<|user|>``/``<|assistant|>`` lines), as instruction tuning does in ptft. Decoding is greedy
unless ``temperature`` > 0; with sampling, the request's ``seed`` seeds each batch, so a retry
with another seed gets another sample. Batches are length-sorted so little padding is computed.
"""

from __future__ import annotations

import torch

from ptft.derive.backend import Backend, Reply
from ptft.evaluate.batching import left_pad, length_sorted_batches


def render_chat(tokenizer, messages) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    parts = [f"<|{m['role']}|>\n{m['content'].strip()}\n" for m in messages]
    return "".join(parts) + "<|assistant|>\n"


class HFBackend(Backend):
    name = "hf"

    def __init__(self, model: str, batch_size: int = 8, device: str | None = None, dtype: str | None = None):
        from ptft.checkpoints.load import load_pretrained

        self.model = model
        self.batch_size = batch_size
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device == "cuda" else None)
        self._lm, self._tok = load_pretrained(model, dtype=torch_dtype, device=device)
        self._lm.eval()

    @torch.no_grad()
    def run(self, requests, on_reply, on_failure) -> None:
        prompts = [render_chat(self._tok, r.messages) for r in requests]
        ids = [self._tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        for batch in length_sorted_batches([len(x) for x in ids], self.batch_size):
            params = requests[batch[0]].params
            temperature = float(params.get("temperature", 0.0))
            if temperature > 0:
                torch.manual_seed(int(params.get("seed", 0)))
            inputs = left_pad([ids[i] for i in batch], self._tok.pad_token_id, self._lm.device)
            inputs.pop("position_ids")  # generate() derives them from the attention mask
            out = self._lm.generate(
                **inputs,
                max_new_tokens=int(params.get("max_tokens", 512)),
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=None,
                top_k=None,
                eos_token_id=self._tok.eos_token_id,
                pad_token_id=self._tok.pad_token_id,
            )
            width = inputs["input_ids"].shape[1]
            for row, i in enumerate(batch):
                new = out[row, width:].tolist()
                if self._tok.eos_token_id in new:
                    new = new[: new.index(self._tok.eos_token_id)]
                on_reply(requests[i], Reply(self._tok.decode(new, skip_special_tokens=True), len(ids[i]), len(new)))
