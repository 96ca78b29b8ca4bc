"""ecs-ipam: the ECS IPAM CNI plugin, and its embedded API.

``IPAM`` (the plugin's core) and ``kv`` (the key/value store) are loaded on first use,
so that the plugin's start-up pays only for what a command needs.  The names in
``__all__`` (and those of ``ecs_ipam.kv`` and ``ecs_ipam.errors``) are the public API,
stable within a major version; everything else is internal.
"""

from __future__ import annotations

__version__ = "1.0.0"

__all__ = ["IPAM", "kv", "__version__"]

# typing.TYPE_CHECKING without importing typing, which every plugin start would pay for.
TYPE_CHECKING = False
if TYPE_CHECKING:
    # What the lazy loader below returns, spelled out for type checkers.
    from . import kv
    from .ipam import IPAM
else:

    def __getattr__(name: str) -> object:
        # import_module, not "from . import": that would ask this very __getattr__ again.
        from importlib import import_module

        if name == "IPAM":
            return import_module(".ipam", __name__).IPAM
        if name == "kv":
            return import_module(".kv", __name__)
        raise AttributeError(f"module 'ecs_ipam' has no attribute {name!r}")
