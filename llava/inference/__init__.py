"""Answers from a loaded model, on top of processing -> batching -> model.

* :mod:`.generation`: batched generation and log-likelihoods (the held-out predictor, the lmms-eval model), the
  one rule for where an answer ends (``StopRule``), sampling arguments;
* :mod:`.chat`: ``ChatSession``, the multi-turn streamed session behind the chat CLI and the demo.
"""
