"""Stage 2: generators over a tokenizer's codes (they use a tokenizer; never the reverse)."""
