"""Shared fixtures."""

from __future__ import annotations

import pytest
from encoder_utils import tiny_encoder


@pytest.fixture
def make_encoder():
    return tiny_encoder
