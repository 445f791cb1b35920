"""Turn a source record into a prompt/completion :class:`Example`.

Prompts are plain instructions; the chat template of the model is applied by training code.
Lengths are capped in characters so that a pair, with ChatML markup, fits a 128-token
training window. Measured with the SmolLM2 tokenizer (90th percentile of prompt + completion
tokens): code 124, email 99, literature 56, dictionary 26; a few code pairs still exceed 128
and are cut further, by tokens, in training.
Long texts are cut at a line or word boundary, never mid-word, keeping the head: the
signature and first docstring lines of a function, the start of a body or of an email.
"""

from __future__ import annotations

from fedlora.data.provision import Record
from fedlora.data.types import Example

CODE_PROMPT_CHARS = 240
CODE_COMPLETION_CHARS = 160
EMAIL_BODY_CHARS = 160  # equal to the stored length; see sources.spamassassin.BODY_CHARS
LITERATURE_PROMPT = "Continue this passage from {play}:\n{context}"
EMAIL_PROMPT = "Classify this email as spam or ham.\nSubject: {subject}\n{body}"
DICTIONARY_PROMPT = "Define the {pos} '{word}':"
CODE_PROMPT = "Complete this Python function:\n{code}"
EMAIL_LABELS = ("ham", "spam")


def clip(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters at the last line or word break.

    Falls back to a hard cut when the first line or word alone is longer than ``limit``.
    """
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    if len(text) <= limit:
        return text
    head = text[:limit]
    for sep in ("\n", " "):
        cut = head.rfind(sep)
        if cut > 0:
            return head[:cut].rstrip()
    return head


def code_example(record: Record) -> Example:
    """HumanEval problem: signature and docstring in, canonical body out."""
    prompt = CODE_PROMPT.format(code=clip(record["prompt"].strip("\n"), CODE_PROMPT_CHARS))
    return Example(prompt, clip(record["solution"].rstrip(), CODE_COMPLETION_CHARS))


def literature_example(record: Record) -> Example:
    """Two lines of a speech in, the next line out; labelled with the play."""
    prompt = LITERATURE_PROMPT.format(play=record["play"], context=record["context"])
    return Example(prompt, record["next"], label=record["play"])


def email_prompt(record: Record) -> str:
    """The spam/ham question for one email (shared by training and evaluation)."""
    body = clip(record["body"], EMAIL_BODY_CHARS)
    return EMAIL_PROMPT.format(subject=record["subject"] or "(none)", body=body)


def email_example(record: Record) -> Example:
    """Subject and start of the body in, ``spam`` or ``ham`` out."""
    return Example(email_prompt(record), record["label"], label=record["label"])


def dictionary_example(record: Record) -> Example:
    """A word and its part of speech in, the WordNet definition out."""
    prompt = DICTIONARY_PROMPT.format(pos=record["pos"], word=record["word"])
    return Example(prompt, record["gloss"], label=record["pos"])
