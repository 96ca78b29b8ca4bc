"""``python -m ecs_ipam.ctl``: the same as the ``ecs-ipamctl`` console script."""

import sys

from .cli import main

sys.exit(main())
