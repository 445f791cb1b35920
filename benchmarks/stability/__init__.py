"""FedSRD's stability: the two regimes where it diverged, with per-round diagnostics."""
