"""Plain value types shared by the data layer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """One training or evaluation pair; the loss is taken on ``completion`` only.

    Attributes
    ----------
    prompt
        Text the model conditions on (a chat template is applied later, by training).
    completion
        Text the model learns to produce.
    label
        Class of the example where the domain has one (``spam``/``ham``, the play's title,
        the part of speech), else None.
    context
        Input the prompt refers to (Alpaca's ``input``, Dolly's ``context``), if any.
    history
        Earlier turns of a conversation, ``(role, text)``, before ``prompt`` (a user turn).
    """

    prompt: str
    completion: str
    label: str | None = None
    context: str = ""
    history: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DomainData:
    """A domain split deterministically into a training part and a held-out part."""

    name: str
    train: list[Example]
    heldout: list[Example]
