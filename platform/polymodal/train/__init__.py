"""Ray Train wiring: the per-worker loop, the driver that fits it, and the checkpoint format."""
