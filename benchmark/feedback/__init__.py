"""The feedback loop of ``bench feedback``: simulated users refining text-to-image retrieval.

Round 0 is the model's own ranking; in each later round a simulated user looks at the top
``display`` items and marks them: positive samples (PS), negative samples (NS) or neither --
``graded`` (default): close / far / unsure by the share of the query's constraints each
shown image meets; ``binary``: relevant / not --, and each *arm* turns that feedback into a
new ranking: ``none`` (no feedback), ``exclude`` (drop shown non-relevant items), ``refresh``
(score refreshing with PS/NS image similarities) and ``llm`` (clarifying questions, answers
from the ground truth, a refined query). See docs/DESIGN.md, section "Feedback".

Modules, one job each: ``config`` (validated options), ``ranking`` (ranks and display with
exclusion), ``similarity`` (model scores; image-image similarities of shown items, never a
gallery x gallery matrix), ``neighbours`` (the lazily filled top-k table), ``rowcache`` (the
bounded cache of whole rows), ``kernels`` (refresh kernels and what each reads), ``arms``
(the arm registry), ``memcheck`` (peak memory of the image-image path), ``scene_text`` (SynthScenes words in free text), ``user`` (the simulated user),
``closeness`` (how close a shown image is to the query), ``marks`` (the user models: PS / NS / unsure),
``prompts`` / ``schema`` / ``refine`` / ``llm/`` (the LLM-guided round), ``protocol``
(the round loop), ``metrics`` (per-round metrics, BRI), ``transcript`` (JSON Lines),
``record`` (the result file), ``session`` (model + data + protocol for the CLI).
"""
