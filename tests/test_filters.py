"""Filters, dedup and statistics (tinystories.data.filters) on hand-made stories."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tinystories.data import filters as F

STORY = (
    "Once upon a time, there was a little dog named Max. Max liked to jump in the big green park. "
    "One day, Max saw a red ball under a tree. He ran to the ball and jumped over a log. "
    '"Look at me!" said Max to his friend Sue. Sue was a kind cat who liked to play. '
    "They played with the ball all day. When the sun went down, they went home happy. "
    "Max gave Sue a hug and said thank you. The end."
)


def opts(**kw) -> F.FilterOptions:
    return F.FilterOptions(**{"min_words": 10, **kw})


def test_good_story_is_kept_and_cleaned():
    v = F.StoryFilter(opts()).check(STORY, "stop", {"noun": "ball", "verb": "jump", "adjective": "happy"})
    assert v.reason is None
    assert v.words_used == {"noun": True, "verb": True, "adjective": True}


@pytest.mark.parametrize(
    "text,finish,reason",
    [
        ("", "stop", F.EMPTY),
        ("   \n ", "stop", F.EMPTY),
        (STORY, "length", F.TRUNCATED),
        ("Sure! Here is a story about a dog:\n\n" + STORY, "stop", F.PREAMBLE),
        ("Certainly. " + STORY, "stop", F.PREAMBLE),
        (STORY + "\n\nI hope you enjoyed this story!", "stop", F.META),
        (STORY + "\n\nNote: the story uses simple words.", "stop", F.META),
        (STORY.replace("red ball", "**red ball**"), "stop", F.MARKDOWN),
        ("# The Dog\nOnce upon a time there was a dog.\n" + STORY, "stop", F.TITLE),
        (
            "Il était une fois un petit chien qui aimait jouer dans le parc avec ses amis. Il courait vite et "
            "sautait haut. Un jour, il a trouvé une balle rouge sous un arbre et il était très content de jouer.",
            "stop",
            F.NOT_ENGLISH,
        ),
        ("The dog ran. The end.", "stop", F.TOO_SHORT),
    ],
)
def test_each_filter_rejects_its_case(text, finish, reason):
    v = F.StoryFilter(opts()).check(text, finish)
    assert v.reason == reason, (v.reason, v.detail)


def test_too_long():
    v = F.StoryFilter(opts(max_words=20)).check(STORY)
    assert v.reason == F.TOO_LONG and "> 20" in v.detail


def test_titles_are_stripped_only_when_safe():
    for title in ("The Happy Dog", "Title: The Happy Dog", "**The Happy Dog**", "## The Happy Dog"):
        v = F.StoryFilter(opts()).check(f"{title}\n\n{STORY}")
        assert v.reason is None and v.text == STORY, title
    # A title glued to the story (no blank line) cannot be cut safely.
    v = F.StoryFilter(opts()).check(f"Title: The Happy Dog\n{STORY}")
    assert v.reason == F.TITLE
    # With strip_title off a title line is a rejection, not an edit.
    v = F.StoryFilter(opts(strip_title=False)).check(f"The Happy Dog\n\n{STORY}")
    assert v.reason == F.TITLE
    # A first sentence is not a title.
    v = F.StoryFilter(opts()).check("Once upon a time there was a dog.\n\n" + STORY)
    assert v.reason is None and v.text.startswith("Once upon a time there was a dog.")


def test_preamble_checks_can_be_turned_off():
    v = F.StoryFilter(opts(reject_preamble=False)).check(STORY + "\n\nI hope you enjoyed this story!")
    assert v.reason is None


def test_inflections_count_as_using_the_word():
    f = F.StoryFilter(opts())
    # "jumped" for jump, "ran" for run, "babies" for baby, "happier" for happy
    text = STORY + " The babies ran and were happier than ever."
    used = f.words_used(text, {"verb": "run", "noun": "baby", "adjective": "happy"})
    assert used == {"verb": True, "noun": True, "adjective": True}
    used = f.words_used(STORY, {"verb": "jump", "noun": "kite", "adjective": "sad"})
    assert used == {"verb": True, "noun": False, "adjective": False}
    # A list of words of unknown part of speech (published data) is keyed by word.
    assert f.words_used(STORY, ["jump", "kite"]) == {"jump": True, "kite": False}


def test_missing_words_rejected_or_recorded():
    words = {"noun": "kite", "verb": "jump", "adjective": "happy"}
    v = F.StoryFilter(opts()).check(STORY, "stop", words)
    assert v.reason == F.MISSING_WORDS and "kite" in v.detail
    v = F.StoryFilter(opts(require_words=False)).check(STORY, "stop", words)
    assert v.reason is None and v.words_used == {"noun": False, "verb": True, "adjective": True}


def _random_story(rng: random.Random, n: int = 180) -> list[str]:
    vocab = ["".join(chr(97 + (i // 26**k) % 26) for k in range(3)) for i in range(3000)]  # letters only: digits are not word characters
    return [rng.choice(vocab) for _ in range(n)]


def test_exact_duplicates_ignore_case_punctuation_and_spacing():
    d = F.Deduper("near", 0.8, 64, 5)
    a = F.tokenize(STORY)
    b = F.tokenize(STORY.upper().replace(",", "").replace(".", " .  "))
    c = F.tokenize(STORY.replace("dog", "cat").replace("Max", "Tom").replace("ball", "kite").replace("Sue", "Ann"))
    out = d.process([("a", a), ("b", b), ("c", c)])
    assert out[0] is None
    assert out[1] == (F.DUPLICATE, "a", 1.0)
    assert out[2] is None  # too different to be a near-duplicate


def test_near_duplicates_found_with_the_id_they_duplicate():
    rng = random.Random(0)
    d = F.Deduper("near", 0.8, 64, 5)
    stories = [_random_story(rng) for _ in range(50)]
    assert d.process([(f"s{i}", s) for i, s in enumerate(stories)]) == [None] * 50
    near = list(stories[7])
    near[100] = "changed"  # one word of 180: Jaccard of 5-shingles ~ 0.95
    far = list(stories[8])
    for i in range(0, 180, 6):
        far[i] = "x"  # every 6th word: no 5-shingle survives in most windows
    out = d.process([("near", near), ("far", far)])
    assert out[0][0] == F.NEAR_DUPLICATE and out[0][1] == "s7" and out[0][2] >= 0.8
    assert out[1] is None
    # exact mode ignores near-duplicates, off keeps everything
    assert F.Deduper("exact").process([("a", stories[0]), ("b", near), ("c", stories[0])])[1:] == [None, (F.DUPLICATE, "a", 1.0)]
    assert F.Deduper("off").process([("a", stories[0]), ("c", stories[0])]) == [None, None]


def test_signature_estimates_track_true_jaccard():
    rng = random.Random(1)
    d = F.Deduper("near", 0.8, 128, 5)
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
    assert (F.Deduper("near", 0.8, 128, 5).signatures([a]) == d.signatures([a])).all()
    # a story shorter than a shingle still gets a signature
    assert d.signatures([["one", "two"], []]).shape == (2, 128)


def test_stats_exact_values_on_a_hand_made_set():
    acc = F.StatsAccumulator(vocabulary_forms=frozenset({"the", "dog", "ran"}), sample_size=100)
    acc.add({"story": "The dog ran to the park.", "features": ["Dialogue"], "words_used": {"noun": True, "verb": False}})
    acc.add({"story": "The dog ran to the sea!", "features": ["Dialogue", "Twist"], "words_used": {"noun": True, "verb": True}})
    acc.add({"story": "A cat sat.", "features": []})
    stats = acc.result(Counter({"too_short": 2, "near_duplicate": 1}))
    assert stats["kept"] == 3 and stats["rejected"] == 2 + 1 and stats["attempted"] == 6
    assert stats["words_per_story"] == {"mean": 5.0, "median": 6, "p95": 6, "min": 3, "max": 6}
    assert stats["requested_words_used"] == 0.75
    assert stats["features"]["Dialogue"] == {"count": 2, "share": round(2 / 3, 4)}
    # 15 tokens; distinct unigrams: the dog ran to park sea a cat sat = 9
    assert stats["distinct_1"] == round(9 / 15, 4)
    # bigrams: 5 + 5 + 2 = 12; unique: the-dog dog-ran ran-to to-the the-park the-sea a-cat cat-sat = 8
    assert stats["distinct_2"] == round(8 / 12, 4)
    assert stats["top_opening"] == "the dog ran to the" and stats["top_opening_share"] == round(2 / 3, 4)
    # vocabulary: the x2, dog, ran per long story = 4+4 and 0 -> 8 / 15
    assert stats["vocabulary_share"] == round(8 / 15, 4)
    assert stats["near_duplicate_rate"] == 0.25 and stats["exact_duplicate_rate"] == 0.0
    assert set(stats) >= {"whitespace_tokens_per_story", "chars_per_story", "top2000_share", "distinct_3", "rejected_by_reason"}
    assert "kept 3" in F.stats_table(stats)


def test_story_openings_that_look_chatty_are_kept():
    for opening in ("What a sunny day it was!", "I can see the moon, said Tim.", "Once upon a time, Sure the dog ran."):
        v = F.StoryFilter(opts()).check(opening + " " + STORY)
        assert v.reason is None, (opening, v.reason)


def test_token_hashes_match_the_tokenizer():
    texts = [STORY, "'Hello,' said Tom. Don't go!  Lily’s “big” dog—yes... rock'n'roll 3 dogs", "", "  ...  ", "Café au lait"]
    tb = F.TokenBatch(texts)
    for i, text in enumerate(texts):
        tokens = F.tokenize(text)
        assert tb.counts[i] == len(tokens), (text, tokens)
        got = tb.hashes[tb.offsets[i] : tb.offsets[i + 1]]
        assert (got == F.word_hash_values(tokens)).all() if tokens else len(got) == 0
    # equal tokens hash equal wherever they occur; different tokens differ
    h = F.word_hash_values(["dog", "dogs", "dog", "god"])
    assert h[0] == h[2] and len({int(x) for x in h}) == 3
    # a possessive counts as using the noun; quotes around a word do not hide it
    f = F.StoryFilter(opts())
    assert f.words_used("'Jump!' said Lily's dog.", {"verb": "jump", "noun": "lily"}) == {"verb": True, "noun": True}
