"""The assembled tokenizer: encoder -> quantizer -> decoder."""

from vqct.tokenizer.model import TokenizerOutput, VQTokenizer, build_tokenizer

__all__ = ["TokenizerOutput", "VQTokenizer", "build_tokenizer"]
