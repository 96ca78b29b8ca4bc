"""``ecs-ipamctl``, the operator's tool: see the pools, find leaked leases, release them,
export usage, list the raw database, migrate a bolt file.

    cli.py      arguments -> command -> output and exit status (the only shell)
    leases.py   the leases of a snapshot, the staleness rules, the release transaction
    output.py   tables, JSON and the Prometheus text format
    dump.py     the raw buckets and pairs (``ecs-ipamctl dump``, ``tools/dump_db.py``)
    migration.py  a bolt file of the Go plugin into LMDB, offline (``ecs-ipamctl migrate``)
"""
