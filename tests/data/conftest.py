"""Shared fixtures for the data tests: the packaged test tokenizer and a small image config."""
import pytest

from codedance_jax.processing.image import ImageProcessingConfig
from codedance_jax.processing.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="session")
def small_images():
    """Caps images at 112x112 px (16 image tokens) so rendering and collation stay cheap."""
    return ImageProcessingConfig(max_pixels=112 * 112)
