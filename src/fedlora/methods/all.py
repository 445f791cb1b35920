"""Imports every method module so that each registers itself (one line per method)."""

from fedlora.methods import fedavg  # noqa: F401
from fedlora.methods import florist  # noqa: F401
from fedlora.methods import flora  # noqa: F401
from fedlora.methods import flexlora  # noqa: F401
from fedlora.methods import fedex  # noqa: F401
from fedlora.methods import fedprox  # noqa: F401
from fedlora.methods import ffa  # noqa: F401
from fedlora.methods import fedsrd  # noqa: F401
from fedlora.methods import fed_dare  # noqa: F401
