"""Local training of one client: a plain PyTorch loop over a PEFT model."""
