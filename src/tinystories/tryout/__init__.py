"""Trying trained models by hand: `tinystories sample` (terminal) and `tinystories serve` (a local web page)."""
