"""Visual question answering over a retrieval model's query outputs (``bench run --task vqa``).

BLIP-2's generative path (Li et al., 2023, arXiv:2301.12597, Sec. 3.3) on the suite's
models: the retrieval model's query outputs for (image, question) -- ours: the
instruction-conditioned outputs of its dynamic queries, L chosen by its QScaler from the
question (``IdqFormerRetrieval.vqa_queries``); BLIP2: its 32 queries -- are projected by a
learnable linear layer into the input embeddings of a **frozen** causal LM, as a prefix,
followed by the prompt ``"Question: {question} Answer:"``; the answer is generated greedily.

* **Full**: the OPT-2.7B language model and ``language_projection`` of a
  ``Blip2ForConditionalGeneration`` checkpoint (``Salesforce/blip2-opt-2.7b`` or a local
  path), loaded through transformers, with its tokenizer.
* **Tiny**: a small OPT (``OPTConfig``, random init) over a word-level tokenizer of the
  question / answer texts, first trained by the suite on that text alone (language
  modelling on the answer given the context and question, no image: :class:`TextPretraining`),
  then frozen; then the projection and, with ``train_qformer`` (the default), the retrieval
  model's Q-Former side (not its vision tower nor its QScaler) are trained on (image,
  question, answer) with the LM loss on the answer tokens.
  The pretraining text puts the image's content as words (synthetic: the scene graph) before
  the question, where the projected queries stand at VQA time: so the frozen LM has learned to
  read an answer from the context before the question, not only from the question's prior.

Sequence layout (training and generation alike): ``[prefix: n query slots, invalid ones
masked] [prompt (+ answer + EOS), left-padded]``, position ids counted over unmasked tokens
only, so generated tokens are appended at the same place for every row of a batch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, cast

import lightning as L
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, Blip2ForConditionalGeneration, OPTConfig, OPTForCausalLM

from lightning_modules.components.word_tokenizer import build_word_tokenizer
from lightning_modules.contract import VqaPrefix
from lightning_modules.optim import OptimConfig, build_optimizer

OPTIONS_FILE = "vqa_options.json"
LM_DIR = "language_model"
WEIGHTS_FILE = "vqa.safetensors"
#: what the tiny LM's pretraining loss covers (VqaOptions.lm_loss)
LM_LOSSES = ("answer", "all")


@dataclass(frozen=True)
class VqaOptions:
    """``task_args`` of ``--task vqa``.

    lm: full size: a ``Blip2ForConditionalGeneration`` checkpoint (hub id or local path) whose
        ``language_model`` and ``language_projection`` are used; None = the tiny LM.
    lm_hidden, lm_layers, lm_heads: the tiny OPT.
    lm_epochs, lm_lr: its language-model pretraining on the question / answer text (each
        preceded by the image's content as text when the dataset knows it: the scene graph).
    lm_loss: the tokens of a pretraining text the LM loss covers: "answer" (the answer and its
        EOS, given context and question: what makes a small LM learn to *read* the context) or
        "all" (next-token loss on every token, context included).
    epochs, lr, batch_size: training of the projection (and the Q-Former with
        ``train_qformer``) on VQA.
    train_qformer: train the retrieval model's Q-Former side too, as BLIP-2's second stage
        (default; not its vision tower nor its QScaler). False: the projection only -- the
        query outputs are then computed once per question, before training.
    max_new_tokens: greedy decoding stops there or at EOS.
    prompt: the text after the prefix; must contain ``{question}``.
    threads: torch CPU threads while the VQA model is pretrained, trained and answers (then
        restored; None: leave them as they are). Its tensors are small: one thread avoids the
        oversubscription that makes a shared CPU crawl. Not part of any cache key.
    """

    lm: str | None = None
    lm_hidden: int = 64
    lm_layers: int = 2
    lm_heads: int = 4
    lm_epochs: int = 12
    lm_lr: float = 3e-3
    lm_loss: str = "answer"
    epochs: int = 4
    lr: float = 1e-3
    batch_size: int = 64
    train_qformer: bool = True
    max_new_tokens: int = 4
    prompt: str = "Question: {question} Answer:"
    local_files_only: bool = True
    threads: int | None = 1

    def __post_init__(self) -> None:
        if self.lm_loss not in LM_LOSSES:
            raise ValueError(f"task_args.lm_loss must be one of {', '.join(LM_LOSSES)}, got {self.lm_loss!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError("task_args.threads must be >= 1 (or null: leave torch's setting)")
        if "{question}" not in self.prompt:
            raise ValueError(f"task_args.prompt must contain '{{question}}', got {self.prompt!r}")
        if self.lm_hidden % self.lm_heads:
            raise ValueError("task_args.lm_hidden must be a multiple of task_args.lm_heads")
        for name in ("lm_hidden", "lm_layers", "lm_heads", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"task_args.{name} must be >= 1")
        for name in ("lm_epochs", "epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"task_args.{name} must be >= 0")
        if self.lm_lr <= 0 or self.lr <= 0:
            raise ValueError("task_args.lm_lr and task_args.lr must be > 0")


def normalize_answer(text: str) -> str:
    """Exact-match form: lower case, punctuation dropped, whitespace collapsed ("Two." -> "two")."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


# -- the language models ---------------------------------------------------------------------
def tiny_language_model(texts: Sequence[str], options: VqaOptions):
    """``(lm, tokenizer)``: a random small ``OPTForCausalLM`` over a word tokenizer of ``texts``."""
    tok = build_word_tokenizer(texts, 128)
    # activation_dropout is no field of transformers v5's OPTConfig: the config keeps it as an extra
    # attribute (saved in config.json), so the call stays as the saved tiny VQA checkpoints record it
    cfg = OPTConfig(  # type: ignore[call-arg]
        vocab_size=len(tok),
        hidden_size=options.lm_hidden,
        num_hidden_layers=options.lm_layers,
        ffn_dim=4 * options.lm_hidden,
        num_attention_heads=options.lm_heads,
        max_position_embeddings=256,
        word_embed_proj_dim=options.lm_hidden,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    return OPTForCausalLM(cfg), tok


def load_blip2_language_model(path: str, local_files_only: bool = True):
    """``(lm, language_projection, tokenizer)`` of a ``Blip2ForConditionalGeneration`` checkpoint."""
    hf = Blip2ForConditionalGeneration.from_pretrained(path, local_files_only=local_files_only)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
    return hf.language_model, hf.language_projection, tok


def _pad_left(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = True
    return ids, mask


class _VqaRetrieval(VqaPrefix, Protocol):
    """What :class:`VqaModel` uses of its retrieval model: a suite model (an ``nn.Module``) with
    ``vqa_queries``, frozen and kept in eval mode."""

    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]: ...

    def requires_grad_(self, requires_grad: bool = True) -> nn.Module: ...

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...

    def eval(self) -> nn.Module: ...


class VqaModel(L.LightningModule):
    """Retrieval model's query outputs -> linear projection -> frozen causal LM (module docstring)."""

    def __init__(self, retrieval, projection: nn.Linear, lm, tokenizer, options: VqaOptions) -> None:
        super().__init__()
        if not isinstance(retrieval, VqaPrefix):
            raise ValueError(f"{type(retrieval).__name__} has no query outputs for VQA (vqa_queries)")
        width = lm.get_input_embeddings().embedding_dim
        if projection.out_features != width:
            raise ValueError(f"the projection gives {projection.out_features} features, the LM takes {width}")
        self.retrieval: _VqaRetrieval
        self.retrieval, self.projection, self.lm, self.tokenizer, self.options = (
            cast(_VqaRetrieval, retrieval),  # a suite model (an nn.Module) with vqa_queries, checked above
            projection,
            lm,
            tokenizer,
            options,
        )
        self.lm.requires_grad_(False)
        self.retrieval.requires_grad_(False)
        self.train(self.training)  # the LM and the retrieval model run in eval mode (see train)
        if options.train_qformer:
            for name, p in self.retrieval.named_parameters():
                if not name.startswith(("vision_tower.", "qscaler.")):
                    p.requires_grad_(True)

    @classmethod
    def create(cls, retrieval, options: VqaOptions, texts: Sequence[str] = (), lm=None) -> VqaModel:
        """Full (``options.lm``): the checkpoint's LM and projection; tiny: ``lm`` -- an ``(LM,
        tokenizer)`` pair, e.g. pretrained by :class:`TextPretraining` -- or a new LM over
        ``texts`` (still to be pretrained), and a new projection."""
        hidden = retrieval.head.qformer.config.hidden_size
        if lm is not None:
            lm, tok = lm
            projection = nn.Linear(hidden, lm.get_input_embeddings().embedding_dim)
        elif options.lm:
            lm, projection, tok = load_blip2_language_model(options.lm, options.local_files_only)
            if projection.in_features != hidden:
                raise ValueError(
                    f"task_args.lm: its language_projection takes {projection.in_features} features, "
                    f"the {type(retrieval).__name__} Q-Former gives {hidden}"
                )
        else:
            lm, tok = tiny_language_model(texts, options)
            projection = nn.Linear(hidden, lm.get_input_embeddings().embedding_dim)
        return cls(retrieval, projection, lm, tok, options)

    def train(self, mode: bool = True):
        super().train(mode)
        self.lm.eval()  # frozen (and no dropout); the retrieval model's QScaler draws no noise in eval
        self.retrieval.eval()
        return self

    # -- sequences -------------------------------------------------------------------------
    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def prompts(self, questions: Sequence[str]) -> list[str]:
        return [self.options.prompt.format(question=q) for q in questions]

    def prefix_queries(self, images: torch.Tensor, questions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The retrieval model's query outputs ``[B, n, H]`` for (image, question) and their mask."""
        return self.retrieval.vqa_queries(images, questions)

    def _inputs(self, prefix: tuple[torch.Tensor, torch.Tensor], rows: Sequence[Sequence[int]]):
        """``(inputs_embeds, attention_mask, position_ids)`` of ``[projected prefix][left-padded rows]``."""
        queries, qmask = prefix
        embeds = self.projection(queries.to(self.projection.weight.dtype))
        ids, tmask = _pad_left(rows, self.tokenizer.pad_token_id)
        ids, tmask = ids.to(embeds.device), tmask.to(embeds.device)
        embeds = torch.cat([embeds, self.lm.get_input_embeddings()(ids).to(embeds.dtype)], 1)
        mask = torch.cat([qmask.to(embeds.device).bool(), tmask], 1)
        return embeds, mask, self._positions(mask)

    @staticmethod
    def _positions(mask: torch.Tensor) -> torch.Tensor:
        return (mask.long().cumsum(1) - 1).clamp(min=0)

    def _logits(self, embeds, mask, positions) -> torch.Tensor:
        return self.lm(inputs_embeds=embeds, attention_mask=mask.long(), position_ids=positions).logits

    def loss(
        self,
        images: torch.Tensor | None,
        questions: Sequence[str],
        answers: Sequence[str],
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy of the answer tokens (and EOS) given prefix and prompt; ``prefix``:
        query outputs computed beforehand (then ``images`` is not used)."""
        eos = self.tokenizer.eos_token_id
        prompts = self._ids(self.prompts(questions))
        targets = [a + [eos] for a in self._ids([" " + a for a in answers])]
        if prefix is None:
            assert images is not None, "VqaModel.loss needs images or a prefix"
            prefix = self.prefix_queries(images, questions)
        embeds, mask, positions = self._inputs(prefix, [p + t for p, t in zip(prompts, targets)])
        labels = torch.full(mask.shape, -100, dtype=torch.long, device=embeds.device)
        for i, t in enumerate(targets):
            labels[i, mask.shape[1] - len(t) :] = torch.tensor(t, device=embeds.device)
        logits = self._logits(embeds, mask, positions)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, questions: Sequence[str]) -> list[str]:
        """Greedy answers (decoded, special tokens dropped, stripped), one per question."""
        embeds, mask, _ = self._inputs(self.prefix_queries(images, questions), self._ids(self.prompts(questions)))
        eos = self.tokenizer.eos_token_id
        out = torch.full((len(questions), 0), eos, dtype=torch.long, device=embeds.device)
        done = torch.zeros(len(questions), dtype=torch.bool, device=embeds.device)
        for _ in range(self.options.max_new_tokens):
            nxt = self._logits(embeds, mask, self._positions(mask))[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            out = torch.cat([out, nxt[:, None]], 1)
            done |= nxt == eos
            if bool(done.all()):
                break
            embeds = torch.cat([embeds, self.lm.get_input_embeddings()(nxt)[:, None].to(embeds.dtype)], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        answers = []
        for row in out.tolist():
            row = row[: row.index(eos)] if eos in row else row
            answers.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return answers

    # -- training --------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if len(batch) == 5:  # (index, query outputs, their mask, questions, answers): computed beforehand
            _, queries, qmask, questions, answers = batch
            loss = self.loss(None, questions, answers, prefix=(queries, qmask))
        else:  # (index, images, questions, answers)
            _, images, questions, answers = batch
            loss = self.loss(images, questions, answers)
        self.log("vqa/train_loss", loss, prog_bar=True, batch_size=len(questions))
        return loss

    def configure_optimizers(self):
        return build_optimizer(
            self.parameters(), OptimConfig(lr=self.options.lr), self.trainer.estimated_stepping_batches
        )

    # -- checkpoint --------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Projection and, with ``train_qformer``, the trained retrieval weights."""
        names = {n for n, p in self.named_parameters() if p.requires_grad} | {
            f"projection.{k}" for k in self.projection.state_dict()
        }
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if k in names}

    def save_checkpoint(self, directory: Path) -> None:
        """Options, the (frozen, pretrained) LM and its tokenizer, and the trained weights."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(directory / LM_DIR)
        self.tokenizer.save_pretrained(directory / LM_DIR)
        save_file(self.trainable_state(), directory / WEIGHTS_FILE)
        (directory / OPTIONS_FILE).write_text(json.dumps(asdict(self.options), indent=2))

    @classmethod
    def load(cls, directory: Path, retrieval) -> VqaModel:
        """A saved tiny VQA model on ``retrieval`` (the retrieval checkpoint it was trained from)."""
        directory = Path(directory)
        options = VqaOptions(**json.loads((directory / OPTIONS_FILE).read_text()))
        lm = AutoModelForCausalLM.from_pretrained(directory / LM_DIR, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(directory / LM_DIR, local_files_only=True)
        state = load_file(directory / WEIGHTS_FILE)
        weight = state["projection.weight"]
        model = cls(retrieval, nn.Linear(weight.shape[1], weight.shape[0]), lm, tok, options)
        missing = set(state) - set(model.state_dict())
        if missing:
            raise ValueError(f"{directory / WEIGHTS_FILE}: weights the model does not have: {sorted(missing)[:5]}")
        model.load_state_dict(state, strict=False)
        return model


class TextPretraining(L.LightningModule):
    """Language-model pretraining of the tiny LM on text only: batches of ``(index, text before
    the answer, answer)``; the sequence is ``text + " " + answer + EOS``, and the next-token loss
    covers the answer and EOS (``loss="answer"``) or every token (``"all"``)."""

    def __init__(self, lm, tokenizer, lr: float, loss: str = "answer") -> None:
        super().__init__()
        if loss not in LM_LOSSES:
            raise ValueError(f"loss must be one of {LM_LOSSES}, got {loss!r}")
        self.lm, self.tokenizer, self.lr, self.loss_on = lm, tokenizer, lr, loss

    def batch_loss(self, contexts: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        eos = self.tokenizer.eos_token_id
        heads = self.tokenizer(list(contexts), add_special_tokens=False)["input_ids"]
        tails = [a + [eos] for a in self.tokenizer([" " + a for a in answers], add_special_tokens=False)["input_ids"]]
        ids, mask = _pad_left([h + t for h, t in zip(heads, tails)], self.tokenizer.pad_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        labels = ids.masked_fill(~mask, -100)
        if self.loss_on == "answer":
            for i, t in enumerate(tails):
                labels[i, : ids.shape[1] - len(t)] = -100
        logits = self.lm(input_ids=ids, attention_mask=mask.long(), position_ids=VqaModel._positions(mask)).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        _, contexts, answers = batch
        loss = self.batch_loss(contexts, answers)
        self.log("lm/train_loss", loss, prog_bar=True, batch_size=len(contexts))
        return loss

    def configure_optimizers(self):
        return build_optimizer(self.lm.parameters(), OptimConfig(lr=self.lr), self.trainer.estimated_stepping_batches)
