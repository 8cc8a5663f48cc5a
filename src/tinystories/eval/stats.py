"""Confidence intervals for the evaluation's numbers: a mean of grades, a share of completions.

Every figure the judge stage writes to eval/scores.json comes with its uncertainty from here,
so the report can show "6.2 ± 0.4" and "3/10 = 30% [11%–60%]" without recomputing anything.
"""

from __future__ import annotations

import math
import statistics

# Two-sided 95% Student t quantiles; beyond 30 degrees of freedom the normal 1.96 is close enough.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def mean_ci(values: list[float]) -> dict:
    """Mean and the half-width of its 95% confidence interval (t distribution); None when n < 2."""
    n = len(values)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0}
    mean = sum(values) / n
    if n < 2:
        return {"mean": round(mean, 4), "ci95": None, "n": n}
    sd = statistics.stdev(values)
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    return {"mean": round(mean, 4), "ci95": round(t * sd / math.sqrt(n), 4), "n": n}


def proportion_ci(hits: int, n: int) -> dict:
    """A share with its 95% Wilson score interval: unlike mean ± t*sd, it stays honest at the
    edges (0 of 3 is not "certainly 0%")."""
    if n == 0:
        return {"share": None, "low": None, "high": None, "hits": 0, "n": 0}
    z = 1.96
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"share": round(p, 4), "low": round(max(0.0, centre - half), 4), "high": round(min(1.0, centre + half), 4), "hits": hits, "n": n}
