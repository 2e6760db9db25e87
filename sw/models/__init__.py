"""The model zoo: small reference models and data sets that ship with the toolkit
(the digits proxies), for the demo, the benchmarks and a new user's first run; and the
MLPerf Tiny reference topologies (:mod:`.tiny`), for latency and fit.

Layer: imports torch and scikit-learn only.
"""

from .digits import DigitsData, digits_data, DigitsMLP, DigitsCNN, train, evaluate
from .tiny import (ResNet8, DSCNN, MobileNetV1, FCAutoencoder, TINY_MODELS, tiny_model,
                   parameter_count, mac_count)

__all__ = [
    "DigitsData", "digits_data", "DigitsMLP", "DigitsCNN", "train", "evaluate",
    "ResNet8", "DSCNN", "MobileNetV1", "FCAutoencoder", "TINY_MODELS", "tiny_model",
    "parameter_count", "mac_count",
]
