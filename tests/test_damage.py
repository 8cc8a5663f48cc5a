"""The four damages of the judge's discrimination check, and when they do not apply."""

from __future__ import annotations

import random

from test_judge import STORIES
from tinystories.eval import damage


def test_damage_functions():
    text = STORIES[0]
    rng = random.Random(0)
    shuffled = damage.shuffle_sentences(text, rng)
    assert sorted(damage.split_sentences(shuffled)) == sorted(damage.split_sentences(text)) and shuffled.strip() != text
    salad = damage.word_salad(text, rng)
    assert sorted(salad.split()) == sorted(text.split()) and salad.strip() != text
    cut = damage.truncate(text, rng)
    assert 2 <= len(cut.split()) <= 5 and text.startswith(cut.strip())
    assert damage.damage("swapped", text, rng, STORIES[1]) == STORIES[1]
    # not applicable: one sentence cannot be reordered, two words cannot be cut further
    assert damage.shuffle_sentences(" He ran home.", rng) is None
    assert damage.truncate(" He ran", rng) is None
    assert damage.damage("swapped", text, rng, text) is None


def test_a_story_is_cut_at_the_sentence_boundary_nearest_its_middle():
    story = "Tom had a red ball. He threw it to Sue. Sue caught it and laughed. They played all day long."
    beginning, continuation = damage.cut_at_sentence(story)
    assert beginning == "Tom had a red ball. He threw it to Sue.", "the boundary nearest the middle (in characters)"
    assert continuation == " Sue caught it and laughed. They played all day long.", "the true continuation, starting with a space like a completion"
    assert damage.cut_at_sentence('She said "Go!" Then he went home.') == ('She said "Go!"', " Then he went home."), "a closing quote stays with its sentence"
    assert damage.cut_at_sentence("Only one sentence here.") is None, "one sentence has no beginning and continuation"
