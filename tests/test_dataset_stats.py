"""Dataset statistics (tinystories.data.stats) on a hand-made set of stories."""

from __future__ import annotations

from collections import Counter

from tinystories.data import stats as S


def test_stats_exact_values_on_a_hand_made_set():
    acc = S.StatsAccumulator(vocabulary_forms=frozenset({"the", "dog", "ran"}), sample_size=100)
    acc.add({"story": "The dog ran to the park.", "features": ["Dialogue"], "words_used": {"noun": True, "verb": False}})
    acc.add({"story": "The dog ran to the sea!", "features": ["Dialogue", "Twist"], "words_used": {"noun": True, "verb": True}})
    acc.add({"story": "A cat sat.", "features": []})
    stats = acc.result(Counter({"too_short": 2, "near_duplicate": 1}))
    assert stats["kept"] == 3 and stats["rejected"] == 2 + 1 and stats["attempted"] == 6
    assert stats["words_per_story"] == {"mean": 5.0, "median": 6, "p95": 6, "min": 3, "max": 6}
    assert stats["requested_words_used"] == 0.75
    # over the two stories that have requested words: one uses both, the other one of two
    assert stats["requested_words_stories"] == 2, "the story without words_used has no requested words"
    assert stats["all_requested_words_share"] == 0.5, "one of the two stories uses all its words"
    assert stats["requested_words_used_mean"] == 1.5, "(1 + 2) / 2 words used per story"
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
    assert "kept 3" in S.stats_table(stats)
    assert "all used in 50.0% of 2 stories" in S.stats_table(stats), "the table shows the share using every word"


def test_stats_without_requested_words_say_none():
    acc = S.StatsAccumulator(sample_size=10)
    acc.add({"story": "A cat sat on the mat."})
    stats = acc.result(Counter())
    assert stats["requested_words_stories"] == 0, "no story has requested words"
    assert stats["all_requested_words_share"] is None, "no share without requested words"
    assert stats["requested_words_used_mean"] is None, "no mean without requested words"
    assert "prompt words" not in S.stats_table(stats), "no compliance line without requested words"
