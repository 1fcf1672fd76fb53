"""The Pareto front of (cost, quality) points: lower cost and higher quality are better."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (another point dominates one when its
    cost is <= and its quality >=, one of them strictly), sorted by increasing cost."""
    front = []
    for i, (ci, qi) in enumerate(points):
        dominated = any(cj <= ci and qj >= qi and (cj < ci or qj > qi) for j, (cj, qj) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))
