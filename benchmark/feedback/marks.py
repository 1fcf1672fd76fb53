"""How the simulated user marks the items shown in a round: PS, NS, or neither (unsure).

A user model (``feedback.user.model``, registry :data:`USER_MODELS`) turns the shown items
``shown[c, d]`` of queries ``queries[c]`` into :class:`Marks`:

* ``binary`` -- PS = relevant, NS = the others (the dataset's exact relevance of the shown
  items). With display 5 and K = 5 a PS is a hit already, so refreshing can only use NS.
* ``graded`` -- from the closeness of each shown image to the query
  (:mod:`benchmark.feedback.closeness`, computed from the shown image and the query alone):
  PS when closeness >= ``ps_threshold`` ("close"), NS when closeness < ``ns_threshold``
  ("far"), neither in between ("unsure"; also when the closeness is unknown). With
  probability ``noise`` a sure mark is the opposite one; the draw is a fixed function of
  (user seed, query, image) -- :func:`uniform` --, so the user judges an image the same way
  for a query in every round and every arm, and runs are reproducible.

Both report ``match``: the shown items that are relevant. A person recognises an image that
is what they asked for (on SynthScenes this is closeness 1, tested), so an arm that drops
shown items drops the others only. Only the relevance of *shown* items is ever read
(``relevant.gather(1, shown)``); the graded marks read none at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from benchmark.feedback.closeness import Closeness


@dataclass(frozen=True)
class Marks:
    """One round's marks of ``[c, d]`` shown items (``ps`` and ``ns`` disjoint)."""

    ps: torch.Tensor  # bool: positive samples (close / relevant)
    ns: torch.Tensor  # bool: negative samples (far / not relevant)
    match: torch.Tensor  # bool: relevant (what was asked for); never excluded
    closeness: torch.Tensor | None = None  # float32, graded only (NaN: unknown)

    @property
    def unsure(self) -> torch.Tensor:
        return ~(self.ps | self.ns)


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (uint64 in, uint64 out; wrap-around arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def uniform(seed: int, queries: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Uniform draws in [0, 1), one per (query, image) pair of the broadcast arrays: a fixed
    function of (seed, query, image), independent of round, arm and chunking."""
    with np.errstate(over="ignore"):
        x = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + _GOLDEN)
        x = _mix(x ^ (np.asarray(queries, dtype=np.uint64) + _GOLDEN))
        x = _mix(x ^ (np.asarray(images, dtype=np.uint64) + _GOLDEN))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


class BinaryUser:
    """PS = relevant shown items, NS = the others."""

    name = "binary"

    def mark(self, queries: Sequence[int], shown: torch.Tensor, relevant: torch.Tensor) -> Marks:
        match = relevant.gather(1, shown)
        return Marks(match, ~match, match)


class GradedUser:
    """PS / NS / unsure from closeness bands, with seeded noise on the sure marks."""

    name = "graded"

    def __init__(
        self, closeness: Closeness, *, ps_threshold: float, ns_threshold: float, noise: float, seed: int
    ) -> None:
        self.closeness = closeness
        self.ps_threshold, self.ns_threshold, self.noise, self.seed = ps_threshold, ns_threshold, noise, seed

    def closeness_of(self, queries: Sequence[int], shown: torch.Tensor) -> torch.Tensor:
        """``[c, d]`` float32 closeness of each shown image to its query."""
        rows = [[self.closeness(int(q), int(g)) for g in row] for q, row in zip(queries, shown.tolist(), strict=True)]
        return torch.tensor(rows, dtype=torch.float32).reshape(shown.shape)

    def mark(self, queries: Sequence[int], shown: torch.Tensor, relevant: torch.Tensor) -> Marks:
        close = self.closeness_of(queries, shown)
        ps = close >= self.ps_threshold  # NaN compares False: unsure
        ns = close < self.ns_threshold
        if self.noise > 0:
            q = np.asarray(list(queries), dtype=np.int64)[:, None]
            flip = torch.from_numpy(uniform(self.seed, q, shown.numpy()) < self.noise)
            ps, ns = torch.where(flip, ns, ps), torch.where(flip, ps, ns)
        return Marks(ps, ns, relevant.gather(1, shown), close)


#: ``feedback.user.model`` -> a builder ``(user config, closeness or None, seed) -> user model``
USER_MODELS: dict[str, Callable[..., BinaryUser | GradedUser]] = {
    "binary": lambda config, closeness, seed: BinaryUser(),
    "graded": lambda config, closeness, seed: GradedUser(
        closeness, ps_threshold=config.ps_threshold, ns_threshold=config.ns_threshold, noise=config.noise, seed=seed
    ),
}
