"""ORPO Lab: Odds Ratio Preference Optimization to learn from and to run."""

import logging

__version__ = "0.1.0"

# peft imports bitsandbytes whenever it is installed, and on CPUs with AVX512-BF16 bitsandbytes then
# warns that it could not fetch an optional fused kernel from the hub. ORPO Lab never uses that kernel
# (it has no backward; see train.build_model), so the warning would only mislead.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
