"""mitmdump -s shim. mitmproxy puts this folder first on sys.path, where this file's name would
hide the shadowdiff package, so the folder is taken off again before the import."""

import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]

from shadowdiff.live.tap import ShadowDiff  # noqa: E402

addons = [ShadowDiff()]
