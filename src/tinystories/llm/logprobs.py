"""Token log-probabilities in the two shapes the OpenAI API (and llama-cpp-python, which copies it)
returns them, read into one: a dict per generated token, from token text to natural-log probability,
holding the `top_logprobs` most likely tokens at that position and always the generated one."""

from __future__ import annotations

from tinystories.llm.base import TokenLogprobs


def from_chat(logprobs: dict) -> TokenLogprobs:
    """choices[0].logprobs of a chat reply: {"content": [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]}."""
    out = []
    for item in logprobs["content"]:
        position = {str(alt["token"]): float(alt["logprob"]) for alt in item.get("top_logprobs") or ()}
        position[str(item["token"])] = float(item["logprob"])
        out.append(position)
    return out


def from_completion(logprobs: dict) -> TokenLogprobs:
    """choices[0].logprobs of a completion: {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}]}."""
    tokens = logprobs["tokens"]
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    out = []
    for token, logprob, top in zip(tokens, logprobs["token_logprobs"], tops, strict=True):
        position = {str(t): float(lp) for t, lp in (top or {}).items()}
        if logprob is not None:
            position[str(token)] = float(logprob)
        out.append(position)
    return out


def from_reply(mode: str, logprobs: dict) -> TokenLogprobs:
    """Either shape, by the request mode ("chat" or "completion") that produced it."""
    return from_chat(logprobs) if mode == "chat" else from_completion(logprobs)


def missing(mode: str, logprobs: object) -> bool:
    """True when a reply carries no log-probabilities at all (a server that ignores the option)."""
    return not isinstance(logprobs, dict) or logprobs.get("content" if mode == "chat" else "tokens") is None
