"""Stage-2 SFT and projector pre-training (``python -m llava.train.train``)."""
