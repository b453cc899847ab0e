"""Training objectives as plain torch functions: contrastive, reconstruction, classification,
and their weighted sum. No Ray here."""
