"""Which images of a training split are relevant to which training caption.

Training batches carry, per item, the split indices of every image relevant to its caption
(``datamodules.base.RelevantImages``, collated to a LongTensor ``[B, K]`` padded with -1):
SynthScenes' exact scene-graph relevance, or the item's own image on real datasets. This
module turns that column into boolean masks over any images the model holds by split index
-- the batch's own images and, for ``--model ours``' length oracle, a queue of earlier
batches' images -- so that true matches that are not the paired image can be told apart
from negatives.
"""

from __future__ import annotations

import torch


def relevance_mask(relevant: torch.Tensor | None, image_index: torch.Tensor,
                   text_index: torch.Tensor | None = None) -> torch.Tensor:
    """``[B_t, N]`` boolean: is image ``image_index[n]`` relevant to text ``b``?

    ``relevant`` ``[B_t, K]`` long, split indices padded with -1 (the batch's relevance column);
    ``None`` (a batch without that column) falls back to "same image": ``text_index[b] ==
    image_index[n]``. The text's own image counts as relevant either way.
    """
    image_index = image_index.to(torch.long)
    own = None if text_index is None else text_index.to(image_index.device)[:, None] == image_index[None, :]
    if relevant is None:
        if own is None:
            raise ValueError("relevance_mask needs `relevant` or `text_index`")
        return own
    relevant = relevant.to(image_index.device, torch.long)
    top = max(int(relevant.max()) if relevant.numel() else -1, int(image_index.max()) if len(image_index) else -1)
    size = top + 2
    table = torch.zeros(relevant.shape[0], size, dtype=torch.bool, device=relevant.device)
    table.scatter_(1, relevant + 1, True)  # column 0 collects the -1 padding
    mask = table[:, image_index + 1]
    return mask if own is None else mask | own
