"""``ecs-ipamctl``, the operator's tool: see the pools, find leaked leases, release them,
export usage.

    cli.py      arguments -> command -> output and exit status (the only shell)
    leases.py   the leases of a snapshot, the staleness rules, the release transaction
    output.py   tables, JSON and the Prometheus text format
"""
