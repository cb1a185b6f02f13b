"""Data: readers, conversation templates, sample encoding, mixtures, collation, synthetic data.

Importing this package is cheap (no torch / transformers); heavy libraries load when used.
"""

from vlm_core.data.collate import VLMCollator
from vlm_core.data.encoding import SampleEncoder
from vlm_core.data.mixture import MixtureDataset
from vlm_core.data.readers import READERS, Source, detect_format, open_source
from vlm_core.data.templates import IGNORE_INDEX, TEMPLATES, Template, get_template
from vlm_core.data.types import BadSample, BadSampleStats, RawSample

__all__ = [
    "IGNORE_INDEX",
    "READERS",
    "MixtureDataset",
    "SampleEncoder",
    "TEMPLATES",
    "BadSample",
    "BadSampleStats",
    "RawSample",
    "Source",
    "Template",
    "VLMCollator",
    "detect_format",
    "get_template",
    "open_source",
]

