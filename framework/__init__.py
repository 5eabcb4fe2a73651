"""vqct: vector-quantized image tokenizers with codebooks transferred from language models."""

__version__ = "0.1.0"


def load_tokenizer(checkpoint, device="cpu"):
    """A trained tokenizer from a `runs/<run>/checkpoint_<time>` directory: (model, config)."""
    from vqct.tokenizer.load import load_tokenizer as _load

    return _load(checkpoint, device)
