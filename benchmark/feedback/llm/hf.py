"""``--llm hf:<hub id or local path>``: a local transformers causal LM as question writer.

Loaded with ``local_files_only=True`` and ``trust_remote_code=False`` (nothing is
downloaded, no code from the checkpoint runs). The messages go through the tokenizer's
chat template when it has one, else they are joined as ``role: content`` lines ending with
``assistant:``. Generation is greedy (``do_sample=False``) with ``max_new_tokens``; a prompt
longer than the model's context keeps its end (the inputs JSON). A folder that cannot be
loaded is a :class:`~benchmark.config.ConfigError` naming ``--llm``; a failure while
generating is an :class:`~benchmark.feedback.llm.base.LLMError` (``backend_error``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmark.config import ConfigError
from benchmark.feedback.config import LLMConfig
from benchmark.feedback.llm.base import LLMError, Message


class HFBackend:
    def __init__(self, model, tokenizer, *, spec: str, max_new_tokens: int = 384) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.spec = spec
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_spec(cls, spec: str, config: LLMConfig) -> HFBackend:
        path = spec.partition(":")[2]
        kw = {"local_files_only": True, "trust_remote_code": False}
        try:
            tok = AutoTokenizer.from_pretrained(path, **kw)
            model = AutoModelForCausalLM.from_pretrained(path, **kw)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"--llm {spec!r}: cannot load a causal LM from {path!r} with local files only "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from None
        return cls(model, tok, spec=spec, max_new_tokens=config.max_new_tokens)

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "label": f"transformers causal LM {self.spec.partition(':')[2]}",
            "is_llm": True,
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None)),
        }

    def _prompt_ids(self, messages: Sequence[Message]):
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(
                list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=False
            )
        else:
            text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"
            ids = tok(text, return_tensors="pt")["input_ids"]
        if not hasattr(ids, "shape"):  # some versions return a BatchEncoding
            ids = ids["input_ids"]
        limit = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", None
        )
        if limit:
            ids = ids[:, -max(1, limit - self.max_new_tokens) :]
        return ids

    def generate(self, messages: Sequence[Message]) -> str:
        try:
            ids = self._prompt_ids(messages).to(self.model.device)
            pad = self.tokenizer.pad_token_id
            if pad is None:
                pad = self.tokenizer.eos_token_id
            with torch.no_grad():
                out = self.model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=pad,
                )
            return self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        except Exception as e:
            raise LLMError("backend_error", f"{type(e).__name__}: {e}") from e
