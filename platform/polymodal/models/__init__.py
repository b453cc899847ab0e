"""Encoders per modality, decoders, fusion and the JointModel; built from config by registries."""
