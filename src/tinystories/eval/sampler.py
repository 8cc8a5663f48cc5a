"""Batched nucleus sampling with a KV cache for our GPT-Neo checkpoints (and any HF causal LM).

    from tinystories.eval.sampler import generate
    outs = generate(model, [[12, 7, 99], [5]], max_new_tokens=200, seeds=[1, 2], eos_token_id=0)

Why a loop of our own rather than `model.generate`: the completion stage needs one seed per
sequence so that a (model, prompt, sample) triple gives the same story whatever batch it lands
in (a resumed run must not change the rows it has not written yet), it needs to drop finished
rows from the batch (story lengths vary by 5x, and `generate` keeps decoding padding for rows
that hit end-of-text until the longest one is done), and it is measured in
benchmarks/bench_sampler.py against `GPTNeoForCausalLM.generate`.

Correctness notes:
- Left padding: every prompt is padded on the left so the next token of every row sits in the
  last column; the attention mask hides the pads and the position ids count only real tokens,
  so a padded row computes exactly what it would compute alone (tested token for token).
- Randomness: each row draws its uniforms from a counter-based hash of (its seed, step), not
  from a shared generator, which is what makes samples independent of batch composition.
- Top-p keeps the smallest set of most likely tokens whose probability reaches `top_p`
  (the token that crosses the threshold is kept), renormalised.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from tinystories.pipeline.ids import splitmix64


@dataclass
class Generation:
    """One finished sequence: new token ids (without the eos), and why it stopped."""

    index: int  # position in the caller's prompt list
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0  # prompt length actually fed (after any left truncation)
    stopped_at_eos: bool = False  # False: it ran out of max_new_tokens
    truncated_prompt: bool = False  # the prompt was cut on the left to fit the context window


def row_uniforms(seeds: np.ndarray, step: int) -> np.ndarray:
    """One uniform in [0, 1) per row for this decoding step, a pure function of (seed, step)."""
    with np.errstate(over="ignore"):
        counter = splitmix64(seeds.astype(np.uint64)) ^ (np.uint64(step) * np.uint64(0xD1B54A32D192ED03))
    bits = splitmix64(counter) >> np.uint64(11)  # 53 random bits -> exact double in [0, 1)
    return bits.astype(np.float64) / float(1 << 53)


def _sorted_desc(probs):
    import torch

    if probs.device.type == "cpu":
        # torch.sort on CPU is ~15x slower than numpy's for a (64, 10000) batch (measured: 49 ms vs
        # 3 ms), and it was most of the sampler's time; on GPU torch.sort is the fast one.
        arr = np.sort(probs.numpy(), axis=-1)[..., ::-1]
        return torch.from_numpy(np.ascontiguousarray(arr))
    return torch.sort(probs, dim=-1, descending=True).values


def nucleus_threshold(probs, top_p: float):
    """Per row, the probability of the least likely token of the nucleus.

    The nucleus is the smallest most-likely set whose mass reaches top_p: a token is in it when
    the mass of the strictly more likely tokens is still below top_p, so the token that crosses
    the threshold stays and the most likely token is always in. Tokens tied with the threshold
    are all kept (a sort would keep an arbitrary subset of them).
    """
    import torch

    sorted_p = _sorted_desc(probs)
    mass_before = torch.cumsum(sorted_p, dim=-1) - sorted_p
    count = (mass_before < top_p).sum(-1).clamp_(min=1)
    return sorted_p.gather(-1, (count - 1).unsqueeze(-1))


def top_p_mask(probs, top_p: float):
    """Boolean mask of the tokens nucleus sampling may draw (see nucleus_threshold)."""
    if top_p >= 1.0:
        return probs > 0
    return probs >= nucleus_threshold(probs, top_p)


def sample_next(logits, uniforms, temperature: float, top_p: float):
    """Draw one token per row from softmax(logits / temperature) restricted to the top-p nucleus.

    `uniforms` (one per row, in [0, 1)) drive inverse-CDF sampling over the kept tokens in
    vocabulary order (no reordering needed), so the draw is reproducible per row. A dropped token
    adds nothing to the CDF, so it can never be picked. temperature 0 means greedy.
    """
    import torch

    if temperature <= 0:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        probs = probs * top_p_mask(probs, top_p)
    cdf = torch.cumsum(probs, dim=-1)
    target = (uniforms.to(cdf.device, torch.float32) * cdf[..., -1]).unsqueeze(-1)
    pick = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    # Rounding can put the target at the very top of the CDF; the answer is then the last token
    # with any mass (clamping to the last vocabulary entry could pick a dropped token).
    vocab = torch.arange(probs.shape[-1], device=probs.device)
    last_kept = torch.where(probs > 0, vocab, torch.zeros_like(vocab)).amax(-1)
    return torch.minimum(pick, last_kept)


def _cache_kw(model) -> str:
    # transformers 5.x renamed `past_key_values` to `cache` (the old name is deprecated); accept both.
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _select_rows(cache, keep):
    """Drop finished rows from a KV cache (in place when the cache supports it)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(keep)
        return cache
    return tuple(tuple(t.index_select(0, keep) for t in layer) for layer in cache)  # legacy tuple cache


def context_limit(model) -> int | None:
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def generate_batch(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    seeds: Sequence[int],
    *,
    eos_token_id: int | None,
    pad_token_id: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    indices: Sequence[int] | None = None,
    on_token: Callable[[int, int], None] | None = None,
) -> list[Generation]:
    """Generate for one batch of prompts at once (see module docstring). eos_token_id None: never stop early.

    on_token(index, token) is called for every new token kept (not the eos) as soon as it is
    drawn, so a caller can stream text to a terminal or a web page.
    """
    import torch

    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    device = next(model.parameters()).device
    indices = list(indices) if indices is not None else list(range(len(prompts)))
    limit = context_limit(model)
    results = [Generation(index=i) for i in indices]
    fed: list[list[int]] = []
    for res, p in zip(results, prompts):
        p = list(p)
        if not p:
            raise ValueError("empty prompt: give at least one token (e.g. the eos token as a start symbol)")
        if limit is not None:
            room = limit - max_new_tokens
            if room < 1:
                raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in a context of {limit}")
            if len(p) > room:
                p = p[-room:]
                res.truncated_prompt = True
        res.prompt_tokens = len(p)
        fed.append(p)

    width = max(len(p) for p in fed)
    batch = len(fed)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    for r, p in enumerate(fed):
        input_ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        attention[r, width - len(p) :] = 1
    # Positions count real tokens only; pads get 0 (they are masked anyway).
    position_ids = (attention.cumsum(-1) - 1).clamp_(min=0)
    input_ids, attention, position_ids = input_ids.to(device), attention.to(device), position_ids.to(device)

    alive = torch.arange(batch, device=device)  # rows of `results` still generating, in cache order
    seed_arr = np.asarray([int(s) & 0x7FFFFFFFFFFFFFFF for s in seeds], dtype=np.uint64)
    cache_kw = _cache_kw(model)
    cache = None
    next_pos = position_ids[:, -1:] + 1
    step_ids = input_ids
    step_pos = position_ids

    with torch.inference_mode():
        for step in range(max_new_tokens):
            kwargs = {cache_kw: cache}
            out = model(input_ids=step_ids, attention_mask=attention, position_ids=step_pos, use_cache=True, logits_to_keep=1, **kwargs)
            cache = _out_cache(out)
            logits = out.logits[:, -1, :]
            alive_cpu = alive.tolist()
            uniforms = torch.from_numpy(row_uniforms(seed_arr[alive_cpu], step))
            tokens = sample_next(logits, uniforms, temperature, top_p)
            tok_list = tokens.tolist()
            done_rows = []
            for j, (row, tok) in enumerate(zip(alive_cpu, tok_list)):
                if eos_token_id is not None and tok == eos_token_id:
                    results[row].stopped_at_eos = True
                    done_rows.append(j)
                else:
                    results[row].tokens.append(tok)
                    if on_token is not None:
                        on_token(results[row].index, tok)
            if step == max_new_tokens - 1:
                break
            n_alive = len(alive_cpu)
            if len(done_rows) == n_alive:
                break
            if done_rows:
                # Drop finished rows at once: stories differ in length by several times, and a
                # row that keeps decoding padding costs as much as a live one.
                finished_now = set(done_rows)
                keep_local = [j for j in range(n_alive) if j not in finished_now]
                keep = torch.tensor(keep_local, device=device)
                alive = alive.index_select(0, keep)
                tokens = tokens.index_select(0, keep)
                next_pos = next_pos.index_select(0, keep)
                attention = attention.index_select(0, keep)
                cache = _select_rows(cache, keep)
            step_ids = tokens.unsqueeze(-1)
            step_pos = next_pos
            next_pos = next_pos + 1
            attention = torch.cat([attention, torch.ones((attention.shape[0], 1), dtype=attention.dtype, device=device)], dim=-1)
    return results


def generate(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    seeds: Sequence[int],
    *,
    eos_token_id: int | None,
    pad_token_id: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 32,
) -> list[Generation]:
    """Generate for any number of prompts; returns one Generation per prompt, in input order."""
    out: list[Generation | None] = [None] * len(prompts)
    for gen in iter_generate(model, prompts, max_new_tokens, seeds, eos_token_id=eos_token_id, pad_token_id=pad_token_id, temperature=temperature, top_p=top_p, batch_size=batch_size):
        out[gen.index] = gen
    return out  # type: ignore[return-value]


def iter_generate(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    seeds: Sequence[int],
    *,
    eos_token_id: int | None,
    pad_token_id: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    on_batch: Callable[[list[Generation]], None] | None = None,
) -> Iterator[Generation]:
    """Yield Generations batch by batch (so a caller can append them to disk as they finish).

    Prompts are grouped by length so a batch carries little padding; each Generation carries
    its index in `prompts`.
    """
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    batch_size = max(1, int(batch_size))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        gens = generate_batch(
            model,
            [prompts[i] for i in idx],
            max_new_tokens,
            [seeds[i] for i in idx],
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            temperature=temperature,
            top_p=top_p,
            indices=idx,
        )
        if on_batch is not None:
            on_batch(gens)
        yield from gens
