"""A byte-level tokenizer built in code, for tiny test models, plus the ChatML template.

The tiny models must run with no files at all, so their tokenizer cannot come from a hub
folder. A byte-level BPE with no merges has exactly one token per byte: any UTF-8 text
round-trips, and the vocabulary (256 bytes + 3 special tokens) is small enough for a
64-wide model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: ChatML, the chat format of SmolLM2 and Qwen2: ``<|im_start|>role\ncontent<|im_end|>\n``
#: per message, and ``<|im_start|>assistant\n`` when a generation prompt is requested.
#: Unlike SmolLM2's own template it adds no default system message, so prompts contain only
#: what the caller put there.
CHATML_TEMPLATE: str = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<pad>"
#: Special tokens in id order; they follow the 256 byte tokens.
SPECIAL_TOKENS: tuple[str, ...] = (IM_START, IM_END, PAD)
#: Vocabulary size of :func:`build_byte_tokenizer`.
BYTE_VOCAB_SIZE: int = 256 + len(SPECIAL_TOKENS)


def build_byte_tokenizer() -> PreTrainedTokenizerBase:
    """Build a byte-level tokenizer with ChatML special tokens, entirely offline.

    Ids 0-255 are the 256 bytes (in GPT-2's printable byte alphabet), then
    ``<|im_start|>`` = 256, ``<|im_end|>`` = 257, ``<pad>`` = 258. ``<|im_start|>`` is the
    BOS token and ``<|im_end|>`` the EOS token, as in SmolLM2; no token is added
    automatically when encoding.

    Returns
    -------
    PreTrainedTokenizerBase
        A fast tokenizer with :data:`CHATML_TEMPLATE` as its chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # ByteLevel maps byte b to a printable character; order ids by byte value so id == byte.
    byte_chars = sorted(alphabet, key=_byte_of_char)
    vocab = {char: index for index, char in enumerate(byte_chars)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # use_regex=False: with no merges the GPT-2 word split would change nothing but speed.
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=IM_START,
        eos_token=IM_END,
        pad_token=PAD,
        model_max_length=512,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _byte_of_char(char: str) -> int:
    """Invert GPT-2's byte-to-printable-character map for one character."""
    code = ord(char)
    # Printable Latin-1 bytes map to themselves; the other 68 bytes map to 256 + k in byte
    # order, so sorting the alphabet by this key yields bytes 0..255 in order.
    printable = (
        ord("!") <= code <= ord("~") or ord("¡") <= code <= ord("¬") or ord("®") <= code <= ord("ÿ")
    )
    if printable:
        return code
    return _non_printable_bytes()[code - 256]


def _non_printable_bytes() -> list[int]:
    """Bytes that GPT-2's map sends to code points 256, 257, ... in that order."""
    return [
        b
        for b in range(256)
        if not (ord("!") <= b <= ord("~") or ord("¡") <= b <= ord("¬") or ord("®") <= b <= ord("ÿ"))
    ]
