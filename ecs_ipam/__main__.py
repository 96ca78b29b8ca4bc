"""``python -m ecs_ipam``: the same as the ``ecs-ipam`` console script."""

from .entry import run

run()
