"""A hand-made story that passes every check, shared by the tests of the story data modules."""

STORY = (
    "Once upon a time, there was a little dog named Max. Max liked to jump in the big green park. "
    "One day, Max saw a red ball under a tree. He ran to the ball and jumped over a log. "
    '"Look at me!" said Max to his friend Sue. Sue was a kind cat who liked to play. '
    "They played with the ball all day. When the sun went down, they went home happy. "
    "Max gave Sue a hug and said thank you. The end."
)
