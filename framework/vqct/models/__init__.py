"""Image models: the VQGAN encoder/decoder, the PatchGAN discriminator, their losses."""
