"""Retrieval indexes of embeddings: the on-disk format and exact top-k search, without Ray."""
