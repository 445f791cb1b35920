"""Held-out evaluation: completion loss and likelihood-scored multiple choice."""
