"""vqct: vector-quantized image tokenizers with codebooks transferred from language models."""

__version__ = "0.1.0"
