"""Input data: corpora (TFDS builders), tokenizers, packing/masking and the grain loader."""
