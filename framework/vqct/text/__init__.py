"""Text priors: frozen text encoders, part-of-speech vocabularies, the adjective-noun
graph, and the cached priors that the transfer quantizer starts from."""
