"""Towers: the plain nn.Modules that encode a modality to [B, out_dim] features, and the
decoders back; no polymodal imports, so modality files can build them."""
