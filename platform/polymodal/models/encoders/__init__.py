"""One encoder family per modality; each maps a batch to [B, width] features."""
