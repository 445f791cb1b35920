"""fedlora: communication-efficient federated fine-tuning of language models with LoRA."""

__version__ = "0.1.0"
