"""Run configuration: frozen dataclasses, checked on construction, loaded from TOML.

A run is described by one TOML file plus ``key=value`` overrides from the command line
(``train.lr=1e-4``, ``method.name=fedsrd``, ``method.fedsrd.p_down=0.5``; ``method=NAME`` is
short for ``method.name=NAME``). Every section is a dataclass (:mod:`.sections`); unknown keys
and bad values raise :class:`ConfigError` naming the dotted key. Method options live in
``[method.<name>]`` and are validated by that method's own config dataclass.
"""

from fedlora.config.federation import SecAggConfig
from fedlora.config.loading import apply_overrides, from_dict, load, to_dict
from fedlora.config.sections import (
    ALL_LINEAR,
    BUILTIN_PARTITIONS,
    MODEL_DTYPES,
    QUANTIZE,
    UPLINK_SPARSIFIERS,
    DataConfig,
    EvalConfig,
    FederationConfig,
    LogConfig,
    LoraConfig,
    MethodChoice,
    ModelConfig,
    PrivacyConfig,
    RunConfig,
    TrainConfig,
    UplinkConfig,
    WireConfig,
)
from fedlora.errors import ConfigError

__all__ = [
    "ALL_LINEAR",
    "BUILTIN_PARTITIONS",
    "MODEL_DTYPES",
    "QUANTIZE",
    "UPLINK_SPARSIFIERS",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FederationConfig",
    "LogConfig",
    "LoraConfig",
    "MethodChoice",
    "ModelConfig",
    "PrivacyConfig",
    "RunConfig",
    "SecAggConfig",
    "TrainConfig",
    "UplinkConfig",
    "WireConfig",
    "apply_overrides",
    "from_dict",
    "load",
    "to_dict",
]
