"""at_probe: probe and apply Attention Transition (arXiv 2307.13365) on Llama models.

Built on TransformerLens' ``TransformerBridge``. See README.md for a tour.
"""

from at_probe.loading import DEFAULT_MODEL, TINY_MODEL_DIR, load_model
from at_probe.probe import FlowProbe, FlowResult
from at_probe.prompts import Prompt, build_prompt
from at_probe.transition import (
    PaperTransition,
    PlaceboTransition,
    SRATransition,
    dispense,
    paper_schedule,
    sra_layer,
)

__version__ = "0.2.0"

__all__ = [
    "DEFAULT_MODEL",
    "TINY_MODEL_DIR",
    "FlowProbe",
    "FlowResult",
    "PaperTransition",
    "PlaceboTransition",
    "Prompt",
    "SRATransition",
    "__version__",
    "build_prompt",
    "dispense",
    "load_model",
    "paper_schedule",
    "sra_layer",
]
