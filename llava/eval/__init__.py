"""Evaluation: answering records (``predict``); the lmms-eval model comes next."""
