"""Options of ``bench feedback``: typed dataclasses validated on construction.

:class:`FeedbackConfig` holds the protocol (rounds T, display size, cut-offs, arms), the
score-refreshing weights (:class:`RefreshConfig`), the LLM-guided round
(:class:`LLMConfig`: backend spec, alpha, timeouts, retries, limits), the simulated
user (:class:`UserConfig`) and how the gallery's image-image similarities are computed
(:class:`SimilarityConfig`: top-k neighbours, row chunk, row cache). It is built from plain dicts with
:func:`benchmark.config.from_dict` (``--feedback-set key.path=value``), so an unknown key or
a wrong type names the offending option; it is stored whole in the result file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

from benchmark.config import ConfigError
from benchmark.feedback.kernels import KERNELS, NEIGHBOURS
from benchmark.feedback.llm.limits import check_limits
from benchmark.feedback.llm.redact import redact_text
from benchmark.feedback.llm.registry import BACKENDS
from benchmark.feedback.marks import USER_MODELS

#: every arm the protocol knows, in report order (``benchmark.feedback.arms.ARMS`` implements them)
ARM_NAMES = ("none", "exclude", "refresh", "llm")
#: the arms each ``--mode`` runs; the two control arms are always part of a run
MODES: dict[str, tuple[str, ...]] = {
    "all": ARM_NAMES,
    "refresh": ("none", "exclude", "refresh"),
    "llm": ("none", "exclude", "llm"),
}
#: how a gallery image is described to the question writer (its stored captions)
GALLERY_CAPTIONS = ("longest", "first")
#: how score refreshing scales the PS / NS similarity terms (see RefreshConfig)
REFRESH_SCALES = ("std", "none")
#: upper bounds of the image-image similarity options (SimilarityConfig)
MAX_TOP_K = 4096
MAX_ROW_CHUNK = 65536
MAX_ROW_CACHE_MB = float(1 << 20)  # 1 TiB


@dataclass(frozen=True)
class RefreshConfig:
    """Score refreshing: ``s_t = w0 * s_{t-1} + w_ps * K(g, PS_t) - w_ns * K(g, NS_t)``.

    PS_t / NS_t are the items marked in round t; a term is left out when its set is empty.
    kernel: how the marked items' image-image similarities (the model's own score) become
    one row, ``benchmark.feedback.kernels``: ``mean`` (mean similarity to the set), ``max``
    (to its nearest member) or ``knn`` (share of the set's members that have g among their
    ``neighbours`` most similar gallery items: only near-duplicates move).
    scale: ``std`` rescales a similarity row to the spread (standard deviation over the
    gallery) of the query's current scores, and multiplies a ``knn`` share by it, so w_ps and
    w_ns are in units of that spread whatever the model's score scale; ``none`` adds the raw
    rows. Defaults: chosen for the default tiny ``ours`` on the SynthScenes val split with the
    graded user (all 2,500 val queries, user seeds 0-2; the best mean ΔHits@5 at round 3 among
    the settings with both terms): ``mean``, w_ps 0.01, w_ns 0.05 -- on that model every larger
    PS weight lowers Hits@5 (docs/experiments/graded-feedback.md, third pass). The weaker model
    of the former Q-Former init chose ``max``, w_ps 0.35, w_ns 0.15 (and the binary user
    ``knn``, m = 3, w_ps 0.5, w_ns 0.1; docs/DESIGN.md, "Feedback").
    """

    w0: float = 1.0
    w_ps: float = 0.01
    w_ns: float = 0.05
    scale: str = "std"
    kernel: str = "mean"
    neighbours: int = 3

    def __post_init__(self) -> None:
        for name in ("w0", "w_ps", "w_ns"):
            if not getattr(self, name) >= 0:  # NaN fails too
                raise ConfigError(f"feedback.refresh.{name} must be a number >= 0, got {getattr(self, name)}")
        if self.scale not in REFRESH_SCALES:
            raise ConfigError(f"feedback.refresh.scale must be one of {', '.join(REFRESH_SCALES)}, got {self.scale!r}")
        if self.kernel not in KERNELS:
            raise ConfigError(f"feedback.refresh.kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if self.neighbours < 1:
            raise ConfigError(f"feedback.refresh.neighbours must be >= 1, got {self.neighbours}")


@dataclass(frozen=True)
class SimilarityConfig:
    """How score refreshing gets the gallery's image-image similarities (the model's own
    image-image score), never as a dense gallery x gallery matrix
    (:mod:`benchmark.feedback.similarity`, :mod:`benchmark.feedback.neighbours`).

    top_k: neighbours kept per gallery item by a kernel that reads only each shown item's
      nearest neighbours (``knn``): a lazily filled ``[G, top_k]`` table (indices + scores).
      None = exactly what the kernel reads, ``refresh.neighbours`` (the default; then the
      table holds what the dense code's ``topk`` picked). It must be >= ``refresh.neighbours``.
    row_chunk: gallery items scored against the whole gallery per pass, the unit of peak
      memory (``row_chunk x G`` scores). None = ``chunk_size`` (the batching of the dense code).
    row_cache_mb: budget of the cache of full image-image rows of shown items, which the
      kernels that read whole rows (``mean``, ``max``, ``residual``) reuse across rounds and
      chunks; rows beyond it are scored again when next shown (same values). 0 = no cache.
    """

    top_k: int | None = None
    row_chunk: int | None = None
    row_cache_mb: float = 1024.0

    def __post_init__(self) -> None:
        if self.top_k is not None and not 1 <= self.top_k <= MAX_TOP_K:
            raise ConfigError(
                f"feedback.similarity.top_k must be null or an integer in [1, {MAX_TOP_K}], got {self.top_k}"
            )
        if self.row_chunk is not None and not 1 <= self.row_chunk <= MAX_ROW_CHUNK:
            raise ConfigError(
                f"feedback.similarity.row_chunk must be null or an integer in [1, {MAX_ROW_CHUNK}], "
                f"got {self.row_chunk}"
            )
        if not 0.0 <= self.row_cache_mb <= MAX_ROW_CACHE_MB:  # NaN fails too
            raise ConfigError(
                "feedback.similarity.row_cache_mb must be a number of MB in "
                f"[0, {MAX_ROW_CACHE_MB:.0f}], got {self.row_cache_mb}"
            )


@dataclass(frozen=True)
class LLMConfig:
    """The LLM-guided round and its backend.

    backend: ``rules`` (deterministic attribute-contrast writer, not an LLM),
      ``hf:<hub id or local path>`` (local transformers causal LM, local files only) or
      ``openai:<base url>`` (OpenAI-compatible chat completions, e.g. ``http://host:8000/v1``).
    alpha: ``s_t = alpha * score(q'_t, g) + (1 - alpha) * s_{t-1}``.
    model: the ``model`` field sent to an OpenAI-compatible server.
    timeout_s / retries / retry_backoff_s: per HTTP request; ``timeout_s`` is a total deadline
      (connect, send, read the whole reply); a retry follows a timeout, an unreachable
      server, HTTP 429 or 5xx, after ``retry_backoff_s * 2**attempt`` seconds.
    max_reply_bytes: the largest reply body read from an OpenAI-compatible server.
    max_new_tokens: generation budget per call (hf and openai).
    min_questions / max_questions / max_options: what a valid question set looks like.
    max_query_chars: a refined query longer than this is refused (invalid output).
    api_key_env: environment variable holding a bearer token for the server (if set).
    """

    backend: str = "rules"
    alpha: float = 0.3
    model: str = "default"
    timeout_s: float = 60.0
    retries: int = 2
    retry_backoff_s: float = 1.0
    max_new_tokens: int = 384
    min_questions: int = 2
    max_questions: int = 3
    max_options: int = 6
    max_query_chars: int = 400
    api_key_env: str = "OPENAI_API_KEY"
    max_reply_bytes: int = 1_000_000

    def __post_init__(self) -> None:
        prefix = self.backend.split(":", 1)[0]
        if prefix not in BACKENDS:
            raise ConfigError(
                f"--llm / feedback.llm.backend: unknown backend {redact_text(self.backend)!r}; expected "
                + ", ".join(BACKENDS[k].usage for k in BACKENDS)
            )
        BACKENDS[prefix].check_spec(self.backend)
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"feedback.llm.alpha must lie in [0, 1], got {self.alpha}")
        try:
            check_limits(self.timeout_s, self.max_reply_bytes)  # NaN and infinities refused too
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.retries < 0 or self.retry_backoff_s < 0:
            raise ConfigError("feedback.llm.retries and feedback.llm.retry_backoff_s must be >= 0")
        if self.max_new_tokens < 1 or self.max_query_chars < 1:
            raise ConfigError("feedback.llm.max_new_tokens and feedback.llm.max_query_chars must be >= 1")
        if not 1 <= self.min_questions <= self.max_questions:
            raise ConfigError(
                "feedback.llm needs 1 <= min_questions <= max_questions, got "
                f"{self.min_questions} and {self.max_questions}"
            )
        if self.max_options < 2:
            raise ConfigError(f"feedback.llm.max_options must be >= 2, got {self.max_options}")


@dataclass(frozen=True)
class UserConfig:
    """The simulated user (:mod:`benchmark.feedback.user`, :mod:`benchmark.feedback.marks`).

    model: how shown items are marked (``benchmark.feedback.marks.USER_MODELS``): ``graded``
      -- from the closeness of each shown image to the query (:mod:`benchmark.feedback.closeness`:
      the share of the query's constraints it satisfies on SynthScenes, caption-word overlap on
      real data): PS when closeness >= ``ps_threshold``, NS when closeness < ``ns_threshold``,
      neither ("unsure") in between; each sure mark flipped with probability ``noise``
      (seeded per user seed, query and image). ``binary`` -- PS = relevant, NS = the others
      (the dataset's exact relevance of the shown items; the protocol before graded marks).
      In both, a shown item that is relevant is recognised as what was asked for: it is never
      dropped by exclusion.
    ps_threshold / ns_threshold: the graded user's bands, ``0 <= ns_threshold <= ps_threshold
      <= 1``, ``ps_threshold > 0`` (equal values: no unsure band). Defaults chosen for
      ``ours`` on the SynthScenes val split (docs/experiments/graded-feedback.md).
    noise: probability in [0, 0.5] that a sure mark is the opposite one (0.5: marks carry no
      information; above it a user would be adversarial, hence the bound).
    unsure_rate: questions of the llm arm: each answer is "none / unsure" with this
      probability (seeded per query, round and question); otherwise greedy (first true option).
    """

    model: str = "graded"
    ps_threshold: float = 0.6
    ns_threshold: float = 0.4
    noise: float = 0.1
    unsure_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.model not in USER_MODELS:
            raise ConfigError(f"feedback.user.model must be one of {', '.join(USER_MODELS)}, got {self.model!r}")
        if not 0.0 < self.ps_threshold <= 1.0:  # NaN fails too
            raise ConfigError(f"feedback.user.ps_threshold must lie in (0, 1], got {self.ps_threshold}")
        if not 0.0 <= self.ns_threshold <= self.ps_threshold:
            raise ConfigError(
                f"feedback.user.ns_threshold must lie in [0, ps_threshold = {self.ps_threshold}], "
                f"got {self.ns_threshold}"
            )
        if not 0.0 <= self.noise <= 0.5:
            raise ConfigError(f"feedback.user.noise must lie in [0, 0.5], got {self.noise}")
        if not 0.0 <= self.unsure_rate <= 1.0:
            raise ConfigError(f"feedback.user.unsure_rate must lie in [0, 1], got {self.unsure_rate}")

    def describe(self) -> dict[str, object]:
        """What the result file records of the user (the graded settings only for ``graded``)."""
        out: dict[str, object] = {"model": self.model}
        if self.model == "graded":
            out |= {"ps_threshold": self.ps_threshold, "ns_threshold": self.ns_threshold, "noise": self.noise}
        return out | {"unsure_rate": self.unsure_rate}


class ImageSimilarity(TypedDict):
    """The resolved image-image similarity settings (:meth:`FeedbackConfig.image_similarity`)."""

    reads: str
    top_k: int | None
    row_chunk: int
    row_cache_mb: float | None


@dataclass(frozen=True)
class FeedbackConfig:
    """One feedback run.

    rounds: T, the number of feedback rounds (rankings 0..T are measured).
    display: how many top items the user sees per round.
    ks: cut-offs of cumulative Hits@K and instantaneous R@K.
    success_k: "found" means a relevant item ranked <= success_k (rounds to success, never found).
    arms: which arms to run (``none``, ``exclude``, ``refresh``, ``llm``).
    exclude_shown: the refinement arms (refresh, llm) also drop shown non-relevant items,
      like the ``exclude`` arm, so that refinement is measured on top of elimination.
    max_queries: evaluate only the first N queries (None = every query).
    chunk_size: queries processed together (bounds memory: chunk x gallery scores per arm,
      and chunk x display x gallery image-image scores in a round of a whole-row kernel).
    score_variant: rank with one of the model's ``score_variants()`` (e.g. ``itc``)
      instead of its main score (None).
    gallery_caption: which stored caption describes a shown image to the question writer.
    seed: the simulated user's seed (None = the run's seed).
    similarity: how the image-image similarities are computed (:class:`SimilarityConfig`).
    """

    rounds: int = 5
    display: int = 5
    ks: tuple[int, ...] = (1, 5, 10)
    success_k: int = 5
    arms: tuple[str, ...] = ARM_NAMES
    exclude_shown: bool = True
    max_queries: int | None = None
    chunk_size: int = 256
    score_variant: str | None = None
    gallery_caption: str = "longest"
    seed: int | None = None
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    user: UserConfig = field(default_factory=UserConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"--rounds / feedback.rounds must be >= 1, got {self.rounds}")
        if self.display < 1:
            raise ConfigError(f"--display / feedback.display must be >= 1, got {self.display}")
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError(f"feedback.ks must be positive integers, got {list(self.ks)}")
        object.__setattr__(self, "ks", tuple(sorted(set(self.ks))))
        if self.success_k < 1:
            raise ConfigError(f"feedback.success_k must be >= 1, got {self.success_k}")
        unknown = [a for a in self.arms if a not in ARM_NAMES]
        if unknown or not self.arms:
            raise ConfigError(
                f"feedback.arms: unknown arm {unknown[0]!r}; valid arms: {', '.join(ARM_NAMES)}"
                if unknown
                else "feedback.arms must name at least one arm"
            )
        object.__setattr__(self, "arms", tuple(a for a in ARM_NAMES if a in self.arms))
        if self.max_queries is not None and self.max_queries < 1:
            raise ConfigError(f"--max-queries / feedback.max_queries must be >= 1, got {self.max_queries}")
        if self.chunk_size < 1:
            raise ConfigError(f"feedback.chunk_size must be >= 1, got {self.chunk_size}")
        if self.gallery_caption not in GALLERY_CAPTIONS:
            raise ConfigError(
                f"feedback.gallery_caption must be one of {', '.join(GALLERY_CAPTIONS)}, got {self.gallery_caption!r}"
            )
        k = self.similarity.top_k
        if KERNELS[self.refresh.kernel].reads == NEIGHBOURS and k is not None and k < self.refresh.neighbours:
            raise ConfigError(
                f"feedback.similarity.top_k must be >= feedback.refresh.neighbours "
                f"({self.refresh.neighbours}): the {self.refresh.kernel} kernel reads that many "
                f"nearest neighbours of each shown item; got {k}"
            )

    def image_similarity(self) -> ImageSimilarity:
        """The resolved image-image similarity settings, as recorded in the result file:
        what the refresh kernel reads (``rows``: whole rows of the shown items; ``neighbours``:
        their ``top_k`` nearest), ``top_k`` (null when no table is used), ``row_chunk`` and
        ``row_cache_mb`` (null when no row is cached)."""
        reads = KERNELS[self.refresh.kernel].reads
        s = self.similarity
        return {
            "reads": reads,
            "top_k": (s.top_k or self.refresh.neighbours) if reads == NEIGHBOURS else None,
            "row_chunk": s.row_chunk or self.chunk_size,
            "row_cache_mb": s.row_cache_mb if reads != NEIGHBOURS else None,
        }

    def check_gallery(self, n_gallery: int) -> None:
        """Every round must be able to show ``display`` items not yet excluded."""
        need = (self.rounds + 1) * self.display
        if n_gallery < need:
            raise ConfigError(
                f"the gallery holds {n_gallery} images, but {self.rounds} rounds showing "
                f"{self.display} each need at least {need}: lower --rounds or --display"
            )
