"""Datasets with demonstrations, prompt templates and tokenisation.

``prepare_model`` (the ``srft prepare-model`` command) and ``toy`` (the toy task) are
imported by their users directly, so importing this package stays light.
"""

from srft_openrlhf.data.encode import Encoded, encode_example
from srft_openrlhf.data.example import Example, LoadedExamples
from srft_openrlhf.data.loading import load_examples
from srft_openrlhf.data.templates import (
    QWEN_MATH_SYSTEM_PROMPT,
    SRFT_SYSTEM_PROMPT,
    TEMPLATES,
    render_prompt,
)

__all__ = [
    "QWEN_MATH_SYSTEM_PROMPT",
    "SRFT_SYSTEM_PROMPT",
    "TEMPLATES",
    "Encoded",
    "Example",
    "LoadedExamples",
    "encode_example",
    "load_examples",
    "render_prompt",
]
