"""``data.template``: how an example's prompt becomes the tokens before its completion.

``chat``: the tokenizer's own chat template (earlier turns, then the prompt as a user turn,
then the assistant header). ``chatml``: the same turns in plain ChatML, with no system turn
the caller did not give (SmolLM2's own template adds a default system message of about 20
tokens to every prompt; ChatML is its format, so this is its template without that line).
``alpaca``: the Stanford Alpaca instruction format (with its
``### Input:`` block when the example has a context), which FedSRD's and FLoRIST's training
scripts use. ``vicuna``: the Vicuna v1.1 conversation format (``USER: … ASSISTANT:``).
The completion follows the prompt tokens and ends with the tokenizer's end-of-text token in
every template; only the completion is trained on.
"""

from __future__ import annotations

from fedlora.data.formats import TEMPLATES
from fedlora.data.types import Example
from fedlora.models.tokenizer import CHATML_TEMPLATE

__all__ = ["TEMPLATES", "prompt_token_ids"]

ALPACA_HEAD = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
)
ALPACA_HEAD_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def _user_text(example: Example) -> str:
    return f"{example.prompt}\n\n{example.context}" if example.context else example.prompt


def alpaca_text(example: Example) -> str:
    earlier = "".join(
        f"### Instruction:\n{text}\n\n" if role == "user" else f"### Response:\n{text}\n\n"
        for role, text in example.history
        if role != "system"
    )
    if example.context:
        body = f"### Instruction:\n{example.prompt}\n\n### Input:\n{example.context}\n\n"
        return ALPACA_HEAD_WITH_INPUT + earlier + body + "### Response:\n"
    return ALPACA_HEAD + earlier + f"### Instruction:\n{example.prompt}\n\n### Response:\n"


def vicuna_text(example: Example, eos: str) -> str:
    system = next((t for r, t in example.history if r == "system"), VICUNA_SYSTEM)
    parts = [system]
    for role, text in example.history:
        if role == "user":
            parts.append(f"USER: {text}")
        elif role == "assistant":
            parts.append(f"ASSISTANT: {text}{eos}")
    parts.append(f"USER: {_user_text(example)}")
    return " ".join(parts) + " ASSISTANT:"


def chat_messages(example: Example) -> list[dict[str, str]]:
    turns = [{"role": role, "content": text} for role, text in example.history]
    return [*turns, {"role": "user", "content": _user_text(example)}]


def prompt_token_ids(tokenizer: object, example: Example, template: str) -> list[int]:
    """Token ids of ``example``'s prompt under ``template`` (see the module docstring)."""
    if template == "chatml" or (template == "chat" and getattr(tokenizer, "chat_template", None)):
        own = {"chat_template": CHATML_TEMPLATE} if template == "chatml" else {}
        ids = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            chat_messages(example), add_generation_prompt=True, tokenize=True, **own
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    if template == "alpaca":
        text = alpaca_text(example)
    elif template == "vicuna":
        text = vicuna_text(example, getattr(tokenizer, "eos_token", None) or "")
    else:  # chat without a chat template: the plain prompt and a newline
        text = _user_text(example) + "\n"
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
