"""The field's evaluation harnesses on polymodal models: mteb (MTEB, MIEB) and CLIP_benchmark."""
