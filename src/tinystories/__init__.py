"""tinystories: the TinyStories methodology (Eldan & Li, 2023) end to end."""

__version__ = "0.1.0"
