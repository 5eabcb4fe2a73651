"""Language alignment heads that plug into any quantizer: LG-VQ (and, later, VQCT-VLT)."""
