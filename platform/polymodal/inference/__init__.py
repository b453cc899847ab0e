"""Inference with trained checkpoints: loading one to embed raw values, and Ray Data batch jobs."""
