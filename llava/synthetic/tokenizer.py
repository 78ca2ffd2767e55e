"""A tiny Qwen2-like tokenizer built offline, for tests, demos and tiny checkpoints.

No hub access is available here, so tests cannot download Qwen's tokenizer. This builds one
that behaves the same way where the project depends on it: byte-level BPE (any text encodes,
no unknown token), Qwen2's pre-tokenisation regex (digits split one by one), NFC
normalisation, the ChatML special tokens as single ids after the regular vocabulary, no BOS,
``eos_token="<|im_end|>"``, ``pad_token="<|endoftext|>"`` and a ``chat_template`` generated
from a registered conversation template (``Conversation.chat_template()``), so
``apply_chat_template(conv.to_messages(), ...)`` renders exactly ``conv.get_prompt()``.
``<think>`` / ``</think>`` are added as single, non-special tokens as in Qwen3
(``skip_special_tokens`` keeps them).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..processing.conversation import Conversation, get_conv_template

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>")
THINK_TOKENS = ("<think>", "</think>")
TINY_VOCAB_SIZE = 512
MODEL_MAX_LENGTH = 2048

# Qwen2's published pre-tokenisation pattern (contractions, letter runs, single digits, ...).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Small fixed English corpus: enough merges for realistic multi-character tokens.
_CORPUS = """
The quick brown fox jumps over the lazy dog. A picture is worth a thousand words.
You are a helpful assistant. Describe the image in detail. What is happening in this video?
The video shows a person riding a bike along the river while the sun is setting.
There is a cat sitting on the table next to a cup of coffee and a laptop computer.
Please answer the question using a single word or phrase. Answer with the option's letter.
The man is wearing a red shirt and blue jeans. The woman is holding an umbrella in the rain.
A large building with many windows stands in the center of the city, near a busy street.
Two dogs are playing with a ball in the park. Children are running on the green grass.
In the first frame, the car is parked; in the last frame, it drives away quickly.
Count the number of people in the picture. There are three people and two bicycles.
The chart shows the sales of the company from 2019 to 2024, increasing every year.
Read the text in the document and summarise the main points in one short paragraph.
What color is the bus? The bus is yellow. Where is the train going? It is going north.
Language models read tokens; vision encoders read patches of pixels from images and frames.
Motion vectors and residuals from the video codec show where things move and change.
"""


def _train_corpus() -> list[str]:
    lines = [line.strip() for line in _CORPUS.strip().splitlines()]
    return lines * 4  # repeat so frequent pairs clearly win; deterministic input order


def _build_backend(vocab_size: int) -> Tokenizer:
    """Byte-level BPE with Qwen2's pre-tokeniser, trained on the built-in corpus."""
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(_train_corpus(), trainer=trainer)
    # Specials after the regular vocabulary, as in Qwen2 (ids vocab, vocab+1, ...).
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return tokenizer


def build_tiny_qwen_tokenizer(
    save_dir: str | Path | None = None,
    vocab_size: int = TINY_VOCAB_SIZE,
    template: str | Conversation = "qwen_1_5",
) -> PreTrainedTokenizerFast:
    """Build the tiny Qwen2-like fast tokenizer; with ``save_dir``, also save it for ``AutoTokenizer``.

    ``template`` (a ``conv_templates`` name or a ``Conversation``) picks the chat template, so a
    tiny checkpoint's tokenizer renders the prompts its LLM is trained on (``"qwen3"`` for Qwen3).
    """
    if not 300 <= vocab_size <= 4096:
        raise ValueError(f"vocab_size must be in [300, 4096] (256 bytes + merges), got {vocab_size}")
    if isinstance(template, str):
        conv = get_conv_template(template)
    elif isinstance(template, Conversation):
        conv = template
    else:
        raise ValueError(
            f"template must be a conv_templates name or a Conversation, got {type(template).__name__}"
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_build_backend(vocab_size),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        chat_template=conv.chat_template(),
    )
    if save_dir is not None:
        tokenizer.save_pretrained(str(save_dir))
    return tokenizer


__all__ = [
    "QWEN2_SPLIT_PATTERN",
    "SPECIAL_TOKENS",
    "THINK_TOKENS",
    "build_tiny_qwen_tokenizer",
]
