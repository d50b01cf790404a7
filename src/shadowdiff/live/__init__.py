"""The live path, in the proxy process: the tap (a mitmproxy addon), sampling, and the proxy
and fleet that embed it. The only package that knows mitmproxy (with replay); it knows
nothing of diffing, and hands every sampled request to the worker process over the channel.
The names load lazily (replay needs the sampler, not mitmproxy's dump master)."""

from typing import TYPE_CHECKING

from shadowdiff.lazy import exports

if TYPE_CHECKING:
    from shadowdiff.live.proxy import serve
    from shadowdiff.live.sampling import Sampler
    from shadowdiff.live.tap import ShadowDiff

__all__ = ["Sampler", "ShadowDiff", "serve"]
__getattr__ = exports(__name__, {"serve": "proxy", "Sampler": "sampling", "ShadowDiff": "tap"})
