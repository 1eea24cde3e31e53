"""Training: configuration, data, and the SAPNet trainer (single process or torchrun DDP)."""
