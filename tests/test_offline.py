"""The test session is offline by construction: no test can wait on the Hub."""

from __future__ import annotations

import os


def test_the_hub_client_was_imported_in_offline_mode():
    """`HF_HUB_OFFLINE` reached huggingface_hub before it read its constants, so no test retries the network."""
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE is True


def test_datasets_and_transformers_are_told_to_stay_offline():
    """`HF_DATASETS_OFFLINE` and `TRANSFORMERS_OFFLINE` are set for the whole session."""
    assert os.environ["HF_DATASETS_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
