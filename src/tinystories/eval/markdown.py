"""Markdown formatting of the report's numbers: one function per kind of number, so that a test
can recompute the text of any cell from eval/scores.json."""

from __future__ import annotations

import math
from typing import Any


def fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}f}"


def fmt_score(stat: dict | None) -> str:
    """`mean ± ci95` as written in the tables."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    if stat.get("ci95") is None:
        return fmt(stat["mean"])
    return f"{fmt(stat['mean'])} ± {fmt(stat['ci95'])}"


def fmt_share(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.0f}%"


def fmt_params(n: int | None) -> str:
    if not n:
        return "n/a"
    return f"{n / 1e6:.2f}M"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return out


def fmt_proportion(stat: dict | None) -> str:
    """A share as `hits/n = share% [low–high%]`, from stats.proportion_ci."""
    if not stat or stat.get("share") is None:
        return "n/a"
    return f"{stat['hits']}/{stat['n']} = {fmt_share(stat['share'])} [{fmt_share(stat['low'])}–{fmt_share(stat['high'])}]"


def fmt_share_ci(stat: dict | None) -> str:
    """A share as `mean% ± ci95` (percentage points), from a mean_ci dict."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    if stat.get("ci95") is None:
        return fmt_share(stat["mean"])
    return f"{fmt_share(stat['mean'])} ± {stat['ci95'] * 100:.0f}"
