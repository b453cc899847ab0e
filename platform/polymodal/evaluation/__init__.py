"""Evaluation: retrieval recall@K for every modality pair, accuracy and zero-shot accuracy."""
