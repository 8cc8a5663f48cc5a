"""What tests/stub_openai.py can be told to do wrong, and its made-up token log-probabilities.

Kept apart from the server so a test reads the list of faults without the HTTP plumbing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Every way a completion call can misbehave (see Fault); the statuses answer with an OpenAI-style error body.
STATUS_FAULTS = ("400", "401", "403", "404", "429", "500", "502", "503")
BODY_FAULTS = ("html", "html200", "error200", "garbage", "truncated", "missing", "empty_choices", "null_content", "echo")
CONNECTION_FAULTS = ("hang", "drop")
FAULT_KINDS = STATUS_FAULTS + BODY_FAULTS + CONNECTION_FAULTS
HTML_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>"


@dataclass
class Fault:
    """One way to misbehave.

    kind: one of FAULT_KINDS.
    "429" "500" "502" "503" "400" "401" "403" "404": that status with an OpenAI-style error body
    (and a Retry-After header when `retry_after` is set);
    "html": a 502 whose body is a proxy's HTML page; "html200": the same page with status 200;
    "error200": a 200 whose JSON is an error object; "garbage": a 200 whose body is not JSON;
    "truncated": a 200 whose completion JSON stops half-way; "missing": 200 JSON without `choices`;
    "empty_choices": `choices: []`; "null_content": a choice whose message content is null;
    "echo": a text/plain reply (status `status`) echoing the request's headers, Authorization first;
    "hang": never answer, close after `hang_s`; "drop": close the connection without an answer.
    It hits requests whose prompt text contains `match` (all when None), `times` times in all,
    or `times` times per distinct prompt when `per_prompt` (so every request fails first, then succeeds).
    """

    kind: str
    match: str | None = None
    times: int = 1
    per_prompt: bool = False
    retry_after: str | None = None  # 429/503: the Retry-After header value (seconds or an HTTP date)
    status: int = 200  # "echo": the status it answers with (a proxy's 502 may echo the request as well as a 200 can)
    hits: dict = field(default_factory=dict)  # prompt text (or "") -> how many requests it hit

    def take(self, text: str) -> bool:
        if self.match is not None and self.match not in text:
            return False
        slot = text if self.per_prompt else ""
        if self.hits.get(slot, 0) >= self.times:
            return False
        self.hits[slot] = self.hits.get(slot, 0) + 1
        return True

    def pick(self, text: str) -> "Fault | None":
        return self if self.take(text) else None


@dataclass
class FaultCycle:
    """Each new prompt text gets the next fault of `faults` in turn, for its first `times` requests:
    with as many prompts as faults, every kind is met, and every prompt can still be answered."""

    faults: list[Fault]
    times: int = 1
    assigned: dict = field(default_factory=dict)  # prompt text -> [the Fault it gets, requests it hit]

    def pick(self, text: str) -> Fault | None:
        if text not in self.assigned:
            self.assigned[text] = [self.faults[len(self.assigned) % len(self.faults)], 0]
        slot = self.assigned[text]
        if slot[1] >= self.times:
            return None
        slot[1] += 1
        return slot[0]

    def kinds_met(self) -> set[str]:
        return {fault.kind for fault, hits in self.assigned.values() if hits}


def _token_logprob(position: int, rank: int) -> float:
    """A made-up but deterministic log-probability: the generated token ranks first."""
    return round(-0.25 - 0.5 * rank - 0.01 * (position % 7), 4)


def _tokens(words: list[str]) -> list[str]:
    # The stub's tokens are its words, each after the first with its leading space: they join to the text.
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def chat_logprobs(words: list[str], k: int) -> list[dict]:
    """logprobs.content of a chat reply, in the OpenAI shape."""
    out = []
    for i, token in enumerate(_tokens(words)):
        alternatives = [{"token": token, "logprob": _token_logprob(i, 0), "bytes": list(token.encode())}]
        alternatives += [{"token": f" alt{r}", "logprob": _token_logprob(i, r), "bytes": list(f" alt{r}".encode())} for r in range(1, k)]
        out.append({"token": token, "logprob": _token_logprob(i, 0), "bytes": list(token.encode()), "top_logprobs": alternatives[:k]})
    return out


def completion_logprobs(words: list[str], k: int) -> dict:
    """choices[0].logprobs of a completion, in the OpenAI (legacy completions) shape."""
    tokens = _tokens(words)
    offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    top = []
    for i, token in enumerate(tokens):
        position = {token: _token_logprob(i, 0)}
        position.update({f" alt{r}": _token_logprob(i, r) for r in range(1, k)})
        top.append(position)
    return {"tokens": tokens, "token_logprobs": [_token_logprob(i, 0) for i in range(len(tokens))], "top_logprobs": top, "text_offset": offsets}
