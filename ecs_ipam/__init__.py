"""ecs-ipam: the ECS IPAM CNI plugin, and its embedded API.

``IPAM`` (the plugin's core) and ``kv`` (the key/value store) are loaded on first use,
so that the plugin's start-up pays only for what a command needs.
"""

__version__ = "1.0.0"

__all__ = ["IPAM", "kv", "__version__"]


def __getattr__(name: str):
    # import_module, not "from . import": that would ask this very __getattr__ again.
    from importlib import import_module

    if name == "IPAM":
        return import_module(".ipam", __name__).IPAM
    if name == "kv":
        return import_module(".kv", __name__)
    raise AttributeError(f"module 'ecs_ipam' has no attribute {name!r}")
