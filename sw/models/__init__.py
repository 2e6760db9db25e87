"""The model zoo: small reference models and data sets that ship with the toolkit
(the digits proxies), for the demo, the benchmarks and a new user's first run.

Layer: imports torch and scikit-learn only.
"""

from .digits import DigitsData, digits_data, DigitsMLP, DigitsCNN, train, evaluate

__all__ = [
    "DigitsData", "digits_data", "DigitsMLP", "DigitsCNN", "train", "evaluate",
]
