"""Story checks (tinystories.data.checks) and required-word matching (tinystories.text.words) on hand-made stories."""

from __future__ import annotations

import pytest

from tinystories.data import checks as C
from tinystories.text import words as W

from story_samples import STORY


def opts(**kw) -> C.FilterOptions:
    return C.FilterOptions(**{"min_words": 10, **kw})


def test_good_story_is_kept_and_cleaned():
    v = C.StoryFilter(opts()).check(STORY, "stop", {"noun": "ball", "verb": "jump", "adjective": "happy"})
    assert v.reason is None
    assert v.words_used == {"noun": True, "verb": True, "adjective": True}


@pytest.mark.parametrize(
    "text,finish,reason",
    [
        ("", "stop", C.EMPTY),
        ("   \n ", "stop", C.EMPTY),
        (STORY, "length", C.TRUNCATED),
        ("Sure! Here is a story about a dog:\n\n" + STORY, "stop", C.PREAMBLE),
        ("Certainly. " + STORY, "stop", C.PREAMBLE),
        (STORY + "\n\nI hope you enjoyed this story!", "stop", C.META),
        (STORY + "\n\nNote: the story uses simple words.", "stop", C.META),
        (STORY.replace("red ball", "**red ball**"), "stop", C.MARKDOWN),
        ("# The Dog\nOnce upon a time there was a dog.\n" + STORY, "stop", C.TITLE),
        (
            "Il était une fois un petit chien qui aimait jouer dans le parc avec ses amis. Il courait vite et "
            "sautait haut. Un jour, il a trouvé une balle rouge sous un arbre et il était très content de jouer.",
            "stop",
            C.NOT_ENGLISH,
        ),
        ("The dog ran. The end.", "stop", C.TOO_SHORT),
    ],
)
def test_each_filter_rejects_its_case(text, finish, reason):
    v = C.StoryFilter(opts()).check(text, finish)
    assert v.reason == reason, (v.reason, v.detail)


def test_too_long():
    v = C.StoryFilter(opts(max_words=20)).check(STORY)
    assert v.reason == C.TOO_LONG and "> 20" in v.detail


def test_titles_are_stripped_only_when_safe():
    for title in ("The Happy Dog", "Title: The Happy Dog", "**The Happy Dog**", "## The Happy Dog"):
        v = C.StoryFilter(opts()).check(f"{title}\n\n{STORY}")
        assert v.reason is None and v.text == STORY, title
    # A title glued to the story (no blank line) cannot be cut safely.
    v = C.StoryFilter(opts()).check(f"Title: The Happy Dog\n{STORY}")
    assert v.reason == C.TITLE
    # With strip_title off a title line is a rejection, not an edit.
    v = C.StoryFilter(opts(strip_title=False)).check(f"The Happy Dog\n\n{STORY}")
    assert v.reason == C.TITLE
    # A first sentence is not a title.
    v = C.StoryFilter(opts()).check("Once upon a time there was a dog.\n\n" + STORY)
    assert v.reason is None and v.text.startswith("Once upon a time there was a dog.")


def test_preamble_checks_can_be_turned_off():
    v = C.StoryFilter(opts(reject_preamble=False)).check(STORY + "\n\nI hope you enjoyed this story!")
    assert v.reason is None


def test_inflections_count_as_using_the_word():
    # "jumped" for jump, "ran" for run, "babies" for baby, "happier" for happy
    text = STORY + " The babies ran and were happier than ever."
    used = W.words_used(text, {"verb": "run", "noun": "baby", "adjective": "happy"})
    assert used == {"verb": True, "noun": True, "adjective": True}
    used = W.words_used(STORY, {"verb": "jump", "noun": "kite", "adjective": "sad"})
    assert used == {"verb": True, "noun": False, "adjective": False}
    # A list of words of unknown part of speech (published data) is keyed by word.
    assert W.words_used(STORY, ["jump", "kite"]) == {"jump": True, "kite": False}


def test_missing_words_rejected_or_recorded():
    words = {"noun": "kite", "verb": "jump", "adjective": "happy"}
    v = C.StoryFilter(opts(require_words=True)).check(STORY, "stop", words)
    assert v.reason == C.MISSING_WORDS and "kite" in v.detail
    v = C.StoryFilter(opts(require_words=False)).check(STORY, "stop", words)
    assert v.reason is None and v.words_used == {"noun": False, "verb": True, "adjective": True}
    # the default keeps it: no story the LLM wrote is thrown away for a missing word
    v = C.StoryFilter(opts()).check(STORY, "stop", words)
    assert v.reason is None, f"the default rejected a story missing a word: {v.reason}"
    assert v.words_used == {"noun": False, "verb": True, "adjective": True}, "words_used must say which words the kept story contains"


def test_story_openings_that_look_chatty_are_kept():
    for opening in ("What a sunny day it was!", "I can see the moon, said Tim.", "Once upon a time, Sure the dog ran."):
        v = C.StoryFilter(opts()).check(opening + " " + STORY)
        assert v.reason is None, (opening, v.reason)
