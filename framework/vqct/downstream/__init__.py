"""Downstream tasks over a tokenizer's frozen codes (the papers judge a codebook by them):
captioning and VQA read code shards (`vqct data tokenize`), train a small model of the same
size and steps for every tokenizer, and score it against the scenes' ground truth."""
