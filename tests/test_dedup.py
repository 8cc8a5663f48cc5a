"""Token hashing and exact / near-duplicate detection (tinystories.data.dedup) on hand-made stories."""

from __future__ import annotations

import random

from tinystories.data import dedup as D
from tinystories.text import words as W

from story_samples import STORY


def _random_story(rng: random.Random, n: int = 180) -> list[str]:
    vocab = ["".join(chr(97 + (i // 26**k) % 26) for k in range(3)) for i in range(3000)]  # letters only: digits are not word characters
    return [rng.choice(vocab) for _ in range(n)]


def test_exact_duplicates_ignore_case_punctuation_and_spacing():
    d = D.Deduper("near", 0.8, 64, 5)
    a = W.tokenize(STORY)
    b = W.tokenize(STORY.upper().replace(",", "").replace(".", " .  "))
    c = W.tokenize(STORY.replace("dog", "cat").replace("Max", "Tom").replace("ball", "kite").replace("Sue", "Ann"))
    out = d.process([("a", a), ("b", b), ("c", c)])
    assert out[0] is None
    assert out[1] == (D.DUPLICATE, "a", 1.0)
    assert out[2] is None  # too different to be a near-duplicate


def test_near_duplicates_found_with_the_id_they_duplicate():
    rng = random.Random(0)
    d = D.Deduper("near", 0.8, 64, 5)
    stories = [_random_story(rng) for _ in range(50)]
    assert d.process([(f"s{i}", s) for i, s in enumerate(stories)]) == [None] * 50
    near = list(stories[7])
    near[100] = "changed"  # one word of 180: Jaccard of 5-shingles ~ 0.95
    far = list(stories[8])
    for i in range(0, 180, 6):
        far[i] = "x"  # every 6th word: no 5-shingle survives in most windows
    out = d.process([("near", near), ("far", far)])
    assert out[0][0] == D.NEAR_DUPLICATE and out[0][1] == "s7" and out[0][2] >= 0.8
    assert out[1] is None
    # exact mode ignores near-duplicates, off keeps everything
    assert D.Deduper("exact").process([("a", stories[0]), ("b", near), ("c", stories[0])])[1:] == [None, (D.DUPLICATE, "a", 1.0)]
    assert D.Deduper("off").process([("a", stories[0]), ("c", stories[0])]) == [None, None]


def test_signature_estimates_track_true_jaccard():
    rng = random.Random(1)
    d = D.Deduper("near", 0.8, 128, 5)
    errors = []
    for frac in (0.0, 0.02, 0.05, 0.1, 0.2):
        a = _random_story(rng)
        b = [w if rng.random() >= frac else "y" for w in a]
        sa, sb = (set(zip(*(t[i:] for i in range(5)))) for t in (a, b))
        true = len(sa & sb) / len(sa | sb)
        sig = d.signatures([a, b])
        errors.append(abs(d.estimate(sig[0], sig[1]) - true))
    assert max(errors) < 0.15, errors
    # signatures depend only on the text: a second index gives the same numbers
    assert (D.Deduper("near", 0.8, 128, 5).signatures([a]) == d.signatures([a])).all()
    # a story shorter than a shingle still gets a signature
    assert d.signatures([["one", "two"], []]).shape == (2, 128)


def test_token_hashes_match_the_tokenizer():
    texts = [STORY, "'Hello,' said Tom. Don't go!  Lily’s “big” dog—yes... rock'n'roll 3 dogs", "", "  ...  ", "Café au lait"]
    tb = D.TokenBatch(texts)
    for i, text in enumerate(texts):
        tokens = W.tokenize(text)
        assert tb.counts[i] == len(tokens), (text, tokens)
        got = tb.hashes[tb.offsets[i] : tb.offsets[i + 1]]
        assert (got == D.word_hash_values(tokens)).all() if tokens else len(got) == 0
    # equal tokens hash equal wherever they occur; different tokens differ
    h = D.word_hash_values(["dog", "dogs", "dog", "god"])
    assert h[0] == h[2] and len({int(x) for x in h}) == 3
    # a possessive counts as using the noun; quotes around a word do not hide it
    assert W.words_used("'Jump!' said Lily's dog.", {"verb": "jump", "noun": "lily"}) == {"verb": True, "noun": True}
