"""What every derivation backend takes and returns.

A backend turns :class:`Request` s (chat messages plus generation parameters) into
:class:`Reply` s. It never sees the cache: the caller sends only the requests the cache does
not hold, and stores each reply as soon as ``on_reply`` receives it, so a crash loses at most
the requests in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Request:
    key: str  # content address in the cache (see ptft.derive.cache.request_key)
    messages: tuple[dict, ...]  # chat messages, {"role": ..., "content": ...}
    params: dict = field(default_factory=dict)  # generation parameters: temperature, max_tokens, seed
    meta: dict = field(default_factory=dict)  # what the backend may need besides the text (toy latents)


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class RequestFailed(Exception):
    """A request that still failed after the backend's retries; the message names why, never the key."""


class Backend:
    name: str = ""
    model: str = ""

    def __repr__(self) -> str:
        return f"{self.name} backend (model {self.model!r})"

    def run(
        self,
        requests: Sequence[Request],
        on_reply: Callable[[Request, Reply], None],
        on_failure: Callable[[Request, str], None],
    ) -> None:
        """Send every request; call ``on_reply`` or ``on_failure`` once per request, in the caller's thread."""
        raise NotImplementedError
