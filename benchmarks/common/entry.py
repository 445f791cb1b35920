"""How a benchmark runs as a command (``python -m benchmarks.<name>``)."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable


def entry(prog: str, main: Callable[[list[str]], int]) -> None:
    """Run ``main`` on the command line's arguments, offline, and exit with its status
    (2, with one line, for any error fedlora raises on purpose)."""
    from fedlora.errors import FedloraError
    from fedlora.models.offline import set_offline

    set_offline()  # a benchmark, like every fedlora command, never reaches a model hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    verbose = "-v" in sys.argv[1:]
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code = main([a for a in sys.argv[1:] if a != "-v"])
    except FedloraError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)
