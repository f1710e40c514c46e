"""The ``toy`` backend: exact rewrites in the toy world, from each document's latent facts.

It ignores the instruction and reads ``request.meta`` (``latent``: the document's facts,
``variant``: the variant's name), so the toy study runs the derivation stage offline and its
variants change exactly one factor. Token counts are whitespace words, as a stand-in.
"""

from __future__ import annotations

import json

from ptft.derive.backend import Backend, Reply
from ptft.toy.docs import rewrite


class ToyBackend(Backend):
    name = "toy"
    model = "toy-world"

    def run(self, requests, on_reply, on_failure) -> None:
        for request in requests:
            latent = request.meta.get("latent")
            if not latent:
                on_failure(request, "toy backend: the document has no latent facts (not a toy_docs document)")
                continue
            try:
                text = rewrite(json.loads(latent), request.meta["variant"])
            except ValueError as e:
                on_failure(request, str(e))
                continue
            prompt_words = sum(len(m["content"].split()) for m in request.messages)
            on_reply(request, Reply(text, prompt_words, len(text.split())))
