"""Synthetic datasets whose answers depend on what is seen, small enough for a CPU and a tiny model, and the
offline tokenizer the tiny models use.

* :mod:`llava.synthetic.tokenizer`: ``build_tiny_qwen_tokenizer``, a Qwen2-style tokenizer (ChatML and image
  special tokens) trained here in a second, for tests and the demo, which cannot download one;
* :mod:`llava.synthetic.tiny_sft`: the tiny SFT preset's colour tasks (images, codec packs, raw
  videos, text) and their held-out split; ``normalise``, the one-word answer the scorers compare;
* :mod:`llava.synthetic.flash_events`: videos in which a flash of 2-4 frames decides the answer.

They live in the package, not in ``playground/``, because the offline lmms-eval tasks the package
ships (``llava/eval/tasks/tiny_ov``, ``flash_events``) render their media with these functions
and must work from an installed wheel. The command lines that write a dataset folder stay in
``playground/`` (``tiny_sft/make_dataset.py``, ``flash_events/make_dataset.py``).
"""
