"""Imports every method module so that each registers itself (one line per method)."""

from fedlora.methods import (
    fed_dare,  # noqa: F401
    fed_sb,  # noqa: F401
    fedavg,  # noqa: F401
    fedex,  # noqa: F401
    fedprox,  # noqa: F401
    fedsa,  # noqa: F401
    fedsrd,  # noqa: F401
    fedsvd,  # noqa: F401
    ffa,  # noqa: F401
    flexlora,  # noqa: F401
    flora,  # noqa: F401
    florist,  # noqa: F401
    local,  # noqa: F401
    rolora,  # noqa: F401
)
