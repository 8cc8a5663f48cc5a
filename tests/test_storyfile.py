"""The story file (tinystories.text.storyfile): what the dataset stages write, the tokenizer reads."""

from __future__ import annotations

from tinystories.io.layout import EOS
from tinystories.text.storyfile import count_stories, iter_stories, write_story_file


def test_written_stories_read_back_exactly(tmp_path):
    stories = ["Once upon a time, Tom found a ball.", "  Lily's “big” dog—yes.\n\nThe end.  ", "Café au lait."]
    path = tmp_path / "data" / "tinystories_dataset.txt"
    assert write_story_file(path, iter(stories)) == 3
    text = path.read_text(encoding="utf-8")
    assert text.count(EOS) == 3, text
    assert text.endswith(EOS + "\n"), text
    assert list(iter_stories(path)) == [s.strip() for s in stories]
    assert count_stories(path, chunk_bytes=7) == 3
    assert [p.name for p in path.parent.iterdir()] == ["tinystories_dataset.txt"], "no temporary file left next to it"
