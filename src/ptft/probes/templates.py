"""The instructions of the probe set's LLM rewrites, each with its version.

Ren & Sutherland's rewrite prompts were written for GPT; ours are ours, versioned as the derive
stage's templates are (:mod:`ptft.derive.templates`): the version is part of every cache key, and
so is the rendered instruction, so an edited template never reuses a stale reply. Bump a
template's version when its meaning changes; the probe set's version changes with it.

- ``semantic``: the same meaning in other words (``chosen_semantic``, ``rejected_semantic``);
- ``format``: the same format with another meaning (``chosen_format``, ``rejected_format``);
- ``random``: a random sentence of as many words as the chosen response (``random_sentence``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeTemplate:
    kind: str  # semantic, format or random: the toy backend's ``probe:<kind>`` variant
    version: str
    system: str
    user: str  # with {text} (the response) and/or {n_words} (its word count)

    @property
    def variant(self) -> str:
        """What a request of this template is, for a backend that reads ``meta`` (the toy backend)."""
        return f"probe:{self.kind}"

    def messages(self, text: str) -> tuple[dict, ...]:
        user = self.user.replace("{n_words}", str(len(text.split()))).replace("{text}", text)
        out = [{"role": "system", "content": self.system}] if self.system else []
        return (*out, {"role": "user", "content": user})


SYSTEM = "You rewrite texts exactly as instructed and reply with the rewritten text only."

TEMPLATES = {
    "semantic": ProbeTemplate(
        "semantic",
        "1",
        SYSTEM,
        "Rephrase the text below: keep its meaning exactly, but use different words and sentence structure, "
        "at about the same length. Reply with the rephrased text only.\n\nText:\n{text}",
    ),
    "format": ProbeTemplate(
        "format",
        "1",
        SYSTEM,
        "Rewrite the text below so that it keeps the same format, structure, length and style but says something "
        "different in meaning. Reply with the rewritten text only.\n\nText:\n{text}",
    ),
    "random": ProbeTemplate(
        "random",
        "1",
        "You write exactly what is asked and reply with it only.",
        "Write one random English sentence of exactly {n_words} words, about anything. Reply with the sentence only.",
    ),
}


def template_versions() -> dict[str, str]:
    return {kind: t.version for kind, t in TEMPLATES.items()}
