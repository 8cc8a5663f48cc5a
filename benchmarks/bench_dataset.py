"""Throughput of the dataset filters + dedup, and the embedded model's stories per hour.

    .venv/bin/python benchmarks/bench_dataset.py [--stories 100000] [--no-embedded]

Builds synthetic stories (150-250 words of common English with dialogue and contractions,
written from a shared pool of sentences the way LLM stories reuse phrases, with 3% exact and
3% near duplicates mixed in),
runs them through StoryFilter and Deduper in batches as the import stage does, and prints:
  - filter and dedup seconds, and stories/s for both together (target: >= 20,000/s);
  - the reference measured in the same run: datasketch MinHash + MinHashLSH on a sample,
    with the same num_perm and threshold, and the speed ratio of ours to it;
  - recall of the injected duplicates, and the dedup index's memory per story;
  - with the embedded backend installed: smollm2-135m tokens/s on two real story prompts,
    and the stories/hour that implies at the paper's ~300 tokens per story.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from tinystories.data.checks import FilterOptions, StoryFilter  # noqa: E402
from tinystories.data.dedup import Deduper  # noqa: E402
from tinystories.text.words import inflections, tokenize  # noqa: E402

TOKENS_PER_STORY = 300  # a 3-5 paragraph TinyStories story is ~200 words, ~300 tokens


def make_corpus(n: int, seed: int = 0) -> tuple[list[str], list[dict], dict]:
    from wordfreq import top_n_list

    from tinystories.text.vocabulary import load_vocabulary

    rng = np.random.default_rng(seed)
    vocab = [w for w in top_n_list("en", 3000) if w.isalpha()][100:2600]
    shipped = load_vocabulary()  # the prompt words come from the shipped list, as in a real run
    names = ["Lily", "Tim", "Ben", "Sue", "Max", "Mia", "Sam", "Amy", "Tom", "Zoe"]
    contractions = ["don't", "can't", "it's", "I'm", "didn't", "Lily's", "we're"]
    pool = []
    for _ in range(20000):
        words = list(rng.choice(vocab, size=int(rng.integers(6, 13))))
        if rng.random() < 0.3:
            words[int(rng.integers(len(words)))] = contractions[int(rng.integers(len(contractions)))]
        sentence = " ".join(words).capitalize()
        if rng.random() < 0.3:  # dialogue, as most stories have
            sentence = f'"{sentence}!" said {names[int(rng.integers(len(names)))]}'
        pool.append(sentence + ".")
    texts, words_req = [], []
    truth = {"exact": 0, "near": 0, "pairs": []}  # pairs: (copy index, original index)
    for i in range(n):
        r = rng.random()
        if i > 100 and r < 0.03:
            j = int(rng.integers(0, i - 1))
            texts.append(texts[j].upper().replace(",", ""))
            words_req.append(words_req[j])
            truth["exact"] += 1
            truth["pairs"].append((i, j))
            continue
        if i > 100 and r < 0.06:
            j = int(rng.integers(0, i - 1))
            toks = texts[j].split()
            k = int(rng.integers(5, len(toks) - 5))
            toks[k] = "banana"  # one word in ~200: Jaccard of 5-shingles ~ 0.95
            texts.append(" ".join(toks))
            words_req.append(words_req[j])
            truth["near"] += 1
            truth["pairs"].append((i, j))
            continue
        name = names[int(rng.integers(len(names)))]
        noun, verb, adj = (shipped[c][int(rng.integers(len(shipped[c])))] for c in ("nouns", "verbs", "adjectives"))
        sents = [f"Once upon a time, there was a {adj} {noun} named {name}.", f"{name} liked to {verb}."]
        length = int(rng.integers(150, 251))
        count = sum(len(s.split()) for s in sents)
        while count < length:
            s = pool[int(rng.integers(len(pool)))]
            sents.append(s)
            count += len(s.split())
        texts.append(" ".join(sents))
        words_req.append({"noun": noun, "verb": verb, "adjective": adj})
    return texts, words_req, truth


def run_ours(texts, words_req, opts: FilterOptions, batch: int = 1024) -> dict:
    flt = StoryFilter(opts)
    dd = Deduper(opts.dedup, opts.dedup_threshold, opts.num_perm, opts.shingle_size)
    # warm the caches (inflections of the vocabulary, wordlists) outside the clock: after its
    # first few thousand stories a long run has them all
    from tinystories.text.vocabulary import load_vocabulary

    vocab = load_vocabulary()
    for c, pos in (("nouns", "noun"), ("verbs", "verb"), ("adjectives", "adjective")):
        for w in vocab[c]:
            inflections(w, pos)
    flt.check(texts[0], "stop", words_req[0])
    t_filter = t_dedup = 0.0
    c0 = time.process_time()
    reasons: dict[str, int] = {}
    outcome: dict[int, str] = {}  # story index -> why it was rejected
    for start in range(0, len(texts), batch):
        # the same calls as DatasetBuilder.add: one filter pass and one dedup pass per batch
        t0 = time.perf_counter()
        idx = range(start, min(start + batch, len(texts)))
        cands = [{"text": texts[i], "finish_reason": "stop", "words": words_req[i]} for i in idx]
        verdicts, tb, ok = flt.check_batch(cands)
        for i, v in zip(idx, verdicts):
            if v.reason:
                reasons[v.reason] = reasons.get(v.reason, 0) + 1
                outcome[i] = v.reason
        t1 = time.perf_counter()
        flat, lengths = tb.select(ok)
        for j, dup in zip(ok, dd.process_hashes([str(start + j) for j in ok], flat, lengths)):
            if dup:
                reasons[dup[0]] = reasons.get(dup[0], 0) + 1
                outcome[start + j] = dup[0]
        t_dedup += time.perf_counter() - t1
        t_filter += t1 - t0
    return {"filter_s": t_filter, "dedup_s": t_dedup, "cpu_s": time.process_time() - c0, "reasons": reasons, "outcome": outcome, "kept": len(dd)}


def run_datasketch(texts, opts: FilterOptions, n: int) -> float:
    """The reference: datasketch MinHash (sha1 per shingle, num_perm permutations) + MinHashLSH."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=opts.dedup_threshold, num_perm=opts.num_perm)
    k = opts.shingle_size
    t0 = time.perf_counter()
    for i, text in enumerate(texts[:n]):
        toks = tokenize(text)
        m = MinHash(num_perm=opts.num_perm)
        m.update_batch([" ".join(toks[j : j + k]).encode() for j in range(max(1, len(toks) - k + 1))])
        if not lsh.query(m):
            lsh.insert(str(i), m)
    return n / (time.perf_counter() - t0)


def index_bytes_per_story(texts, opts: FilterOptions, n: int) -> float:
    toks = [tokenize(t) for t in texts[:n]]
    dd = Deduper(opts.dedup, opts.dedup_threshold, opts.num_perm, opts.shingle_size)
    dd.process([(str(i), toks[i]) for i in range(200)])  # word-hash cache and arrays warm
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for s in range(200, n, 1024):
        dd.process([(f"g{i:07d}", toks[i]) for i in range(s, min(s + 1024, n))])
    dd._sigs = dd._sigs[: len(dd)].copy()  # count the rows in use, not the doubling slack
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / max(1, len(dd) - 200)


def embedded_tokens_per_s() -> dict | None:
    try:
        import llama_cpp  # noqa: F401

        import tinystories.llm.embedded  # noqa: F401
    except Exception as exc:  # not installed: report, do not fail
        print(f"embedded backend unavailable ({exc}); skipping stories/hour")
        return None
    from tinystories.text.prompts import story_prompt
    from tinystories.llm import LLMConfig, Request, make_client

    client = make_client(LLMConfig(backend="embedded", model="smollm2-135m", max_attempts=1), None)
    reqs = [
        Request(key=str(i), messages=({"role": "user", "content": story_prompt(w, f)},), max_tokens=64, temperature=1.0, seed=i)
        for i, (w, f) in enumerate(
            [({"noun": "ball", "verb": "jump", "adjective": "red"}, ["Dialogue"]), ({"noun": "cake", "verb": "share", "adjective": "happy"}, [])]
        )
    ]
    # a first short call loads the model, so its time is not counted as generation
    warm = Request(key="warm", messages=({"role": "user", "content": "Say hi."},), max_tokens=4, seed=0)
    out = client.complete([warm, *reqs], validate=lambda r: r.text)[1:]
    client.close()
    tokens = sum(r.completion_tokens for r in out)
    seconds = sum(r.latency_s for r in out)
    return {"tokens": tokens, "seconds": round(seconds, 2), "tok_s": tokens / seconds if seconds else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stories", type=int, default=100_000)
    ap.add_argument("--reference", type=int, default=5_000, help="stories for the datasketch reference")
    ap.add_argument("--no-embedded", action="store_true")
    args = ap.parse_args()

    opts = FilterOptions(require_words=True)  # as before the default changed: a near copy missing a required word counts as caught
    t0 = time.perf_counter()
    texts, words_req, truth = make_corpus(args.stories)
    words = [len(t.split()) for t in texts]
    print(f"corpus: {len(texts)} stories, words mean {np.mean(words):.0f} (min {min(words)}, max {max(words)}), "
          f"injected {truth['exact']} exact + {truth['near']} near duplicates, built in {time.perf_counter() - t0:.1f}s")  # fmt: skip

    ours = run_ours(texts, words_req, opts)
    total_s = ours["filter_s"] + ours["dedup_s"]
    rate = len(texts) / total_s
    print(f"filter: {ours['filter_s']:.2f}s ({len(texts) / ours['filter_s']:,.0f} stories/s)")
    print(f"dedup:  {ours['dedup_s']:.2f}s ({len(texts) / ours['dedup_s']:,.0f} stories/s), num_perm {opts.num_perm}, "
          f"threshold {opts.dedup_threshold}, shingles of {opts.shingle_size} words")  # fmt: skip
    cpu_rate = len(texts) / ours["cpu_s"]
    print(f"filter + dedup: {rate:,.0f} stories/s wall, {cpu_rate:,.0f} stories per CPU-second (one process; target 20,000/s)")
    try:
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall figures shrink with other load)")
    except OSError:
        pass
    print(f"outcome: kept {ours['kept']}, {ours['reasons']}")
    # An injected copy is caught when it does not reach the dataset: rejected as a duplicate, or
    # by a filter (a near copy whose one changed word was a required word fails missing_words).
    out = ours["outcome"]
    caught = sum(1 for i, _ in truth["pairs"] if i in out)
    as_dup = sum(1 for i, _ in truth["pairs"] if out.get(i) in ("duplicate", "near_duplicate"))
    recall = caught / len(truth["pairs"]) if truth["pairs"] else 1.0
    print(f"injected duplicates kept out of the dataset: {caught} of {len(truth['pairs'])} ({recall:.4f}); {as_dup} as duplicates")

    ours_dedup_rate = len(texts) / ours["dedup_s"]
    ref = run_datasketch(texts, opts, min(args.reference, len(texts)))
    print(f"reference datasketch MinHash+MinHashLSH (dedup only, {min(args.reference, len(texts))} stories): {ref:,.0f} stories/s; "
          f"ours is {ours_dedup_rate / ref:.1f}x")  # fmt: skip

    per_story = index_bytes_per_story(texts, opts, min(30_000, len(texts)))
    print(f"dedup index memory: {per_story:,.0f} bytes per kept story ({per_story * 1e6 / 2**30:.2f} GiB per million)")

    result = {
        "filter_dedup_stories_s": round(rate),
        "filter_stories_s": round(len(texts) / ours["filter_s"]),
        "dedup_stories_s": round(ours_dedup_rate),
        "datasketch_dedup_stories_s": round(ref),
        "dedup_speedup_vs_datasketch": round(ours_dedup_rate / ref, 2),
        "filter_dedup_stories_per_cpu_s": round(cpu_rate),
        "duplicate_recall": round(recall, 4),
        "dedup_index_bytes_per_story": round(per_story),
        "embedded_stories_per_hour": None,
    }
    if not args.no_embedded:
        emb = embedded_tokens_per_s()
        if emb:
            sph = emb["tok_s"] * 3600 / TOKENS_PER_STORY
            print(f"embedded smollm2-135m: {emb['tokens']} tokens in {emb['seconds']}s = {emb['tok_s']:.1f} tok/s "
                  f"-> {sph:,.0f} stories/hour at {TOKENS_PER_STORY} tokens/story (one process, before rejections)")  # fmt: skip
            result["embedded_tokens_per_s"] = round(emb["tok_s"], 2)
            result["embedded_stories_per_hour"] = round(sph)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
