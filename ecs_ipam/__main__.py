"""``python -m ecs_ipam``: the same as the ``ecs-ipam`` console script."""

import sys

from .cni import main

sys.exit(main())
