"""Dataset format, ingest sources, decoding and the Ray Data pipeline."""
