"""Federated LoRA methods: one module per method, each registered by name."""
