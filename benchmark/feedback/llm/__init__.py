"""LLM backends of the feedback loop, behind one small interface (:mod:`.base`) and a
registry of spec prefixes (:mod:`.registry`): ``rules``, ``hf:<id or path>``,
``openai:<base url>``."""
