"""Text-alignment metrics of a tokenizer's codes (`vqct eval`), as plain tensor functions.

- Image-to-text retrieval: each image's global embedding ranks all distinct held-out
  captions; recall@k counts the true caption in the top k (ties count against the image).
- Masked-word recall@1 (LG-VQ's masked text prediction as a probe): each caption word
  token is hidden alone (replaced before the text model encodes the caption, so no feature
  carries it) and predicted from the image's visual tokens and the rest of the caption;
  recall is the share predicted exactly. The same with another image's visual tokens is
  the control: what the caption's context alone predicts.
- Code-word similarity MSE: how far the images' code similarities are from their captions'
  word similarities. Any model has it: the mean quantized vector of each image and the mean
  word embedding of its caption are centred over the set and L2-normalised, and the MSE is
  taken between the two cosine-similarity matrices (off the diagonal). Lower is closer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, targets: torch.Tensor,
                     ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """IMAGE_EMB (N, D) queries, TEXT_EMB (M, D) candidates, TARGETS (N,) the right candidate."""
    scores = F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).t()
    true = scores.gather(1, targets.view(-1, 1))
    rank = (scores >= true).sum(1) - 1  # 0 = first; an equal score elsewhere ranks above
    return {f"r{k}": float((rank < k).float().mean()) for k in ks}


def chance_recall(num_candidates: int, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    return {f"r{k}": min(k, num_candidates) / num_candidates for k in ks}


def single_word_masks(words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For WORDS (B, T) bool, one row per word token: (row's sample index, (R, T) one-hot mask)."""
    sample, position = words.nonzero(as_tuple=True)
    masks = torch.zeros(len(sample), words.shape[1], dtype=torch.bool, device=words.device)
    masks[torch.arange(len(sample), device=words.device), position] = True
    return sample, masks


@torch.no_grad()
def single_word_probes(text: dict, text_encoder=None) -> dict:
    """One row per caption word token, that word masked: {'sample', 'masks', 'tokens', 'pad',
    'targets'}. With TEXT_ENCODER the row's caption is encoded with the word replaced (the
    mask token), so that no token feature carries it; without, the features of the whole
    caption (the official construction, which leaks the word into its context)."""
    from vqct.align.lgvq import masked_caption_tokens

    sample, masks = single_word_masks(text["words"] & text["mask"].bool())
    rows = {"ids": text["ids"][sample], "mask": text["mask"][sample]}
    tokens = text["tokens"][sample] if text_encoder is None else masked_caption_tokens(text_encoder, rows, masks)
    return {"sample": sample, "masks": masks, "tokens": tokens, "pad": ~rows["mask"].bool(),
            "targets": rows["ids"][masks]}


@torch.no_grad()
def masked_word_hits(lgvq, z_vt: torch.Tensor, probes: dict) -> tuple[int, int]:
    """(correct, total) single-word predictions of LG-VQ's predictor from visual tokens Z_VT
    (one row per image of the batch) and PROBES (single_word_probes)."""
    sample = probes["sample"]
    if len(sample) == 0:
        return 0, 0
    logits = lgvq.predict_masked(probes["tokens"].to(z_vt.dtype), probes["pad"], probes["masks"], z_vt[sample])
    return int((logits.argmax(-1) == probes["targets"]).sum()), len(sample)


def mean_word_embedding(tokens: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    weights = words.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def similarity_mse(code_emb: torch.Tensor, word_emb: torch.Tensor) -> float:
    """MSE between the centred cosine-similarity matrices of CODE_EMB (N, C) and WORD_EMB (N, W)."""
    if code_emb.shape[0] < 2:
        return float("nan")

    def gram(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.double() - x.double().mean(0, keepdim=True), dim=-1)
        return x @ x.t()

    off_diagonal = ~torch.eye(code_emb.shape[0], dtype=torch.bool)
    return float(((gram(code_emb) - gram(word_emb)) ** 2)[off_diagonal].mean())
