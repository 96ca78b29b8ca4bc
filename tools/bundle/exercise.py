"""Every command the bundle serves, run once, to learn which modules it needs.

    python -I -S tools/bundle/exercise.py OUT.json SPEC.json

tools/build_bundle.py runs this under the interpreter it bundles, with the flags the
bundle's launcher gives it; SPEC names the paths to put ahead of the standard library (the
checkout, then the directories of the dependencies), the modules to import, a scratch
directory and a closed port.  It runs ADD, CHECK, GC, STATUS, DEL and VERSION in each result
shape, the flags, bad input, each ``ecs-ipamctl`` command and both etcd URL schemes, against a
throwaway database; it also imports every module that ``ecs_ipam`` names anywhere (inside
functions too, as the builder lists them), since a command's rarer branches import more.
It imports nothing for itself that the plugin does not.  Then it writes ``{module name:
file}`` for every module loaded from a file.
"""

from __future__ import annotations

# Only what the plugin imports itself: whatever this script loads lands in the bundle.
import io
import json
import os
import sys
from importlib import import_module


def exercise(work: str, port: int) -> None:
    from ecs_ipam.cni import main as plugin
    from ecs_ipam.ctl.cli import main as ctl

    env = {
        "IPAM_DB_PATH": os.path.join(work, "ipam.db"),
        "ECS_CNI_LOG_FILE": os.path.join(work, "ipam.log"),
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/var/run/netns/none",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": work,
    }

    def run(command: str, conf: object, **extra: str) -> str:
        out = io.StringIO()
        stdin = io.StringIO(conf if isinstance(conf, str) else json.dumps(conf))
        plugin([], {**env, "CNI_COMMAND": command, **extra}, stdin, out)
        return out.getvalue()

    routes = [{"dst": "10.1.0.0/16", "gw": "10.0.0.9"}]
    ipam = {
        "type": "ecs-ipam",
        "id": "t1",
        "ipv4-subnet": "10.0.0.0/24",
        "ipv6-subnet": "fd00::/120",
        "ipv4-routes": routes,
    }
    for version in ("0.2.0", "0.3.0", "1.1.0"):
        conf = {"cniVersion": version, "name": "n", "ipam": ipam}
        result = json.loads(run("ADD", conf))
        if version == "1.1.0":
            run("CHECK", {**conf, "prevResult": result})
            run("STATUS", conf)
            run("GC", {**conf, "cni.dev/valid-attachments": []})
        run("DEL", conf)
    run("VERSION", "")
    for bad in ("{", '{"cniVersion": "9.9.9"}', json.dumps({"cniVersion": "0.3.0", "ipam": {"ipv4-subnet": ""}})):
        run("ADD", bad)
    for flag in ("--version", "--capabilities"):
        plugin([flag], env, io.StringIO(""), io.StringIO())
    run("ADD", {"cniVersion": "0.3.0", "name": "n", "ipam": ipam})
    live = os.path.join(work, "live")
    with open(live, "w", encoding="utf-8") as f:
        f.write("c1\n")
    for args in (
        ["leases"],
        ["leases", "--json"],
        ["stale"],
        ["stale", "--live", live, "--json"],
        ["usage"],
        ["usage", "--json"],
        ["usage", "--prometheus"],
        ["release", "--id", "t1", "--dry-run"],
        ["release", "--address", "10.0.0.2"],
        ["--help"],
        ["no-such-command"],
    ):
        ctl(args, env, io.StringIO(""), io.StringIO(), io.StringIO())
    # Nothing listens there: each URL goes as far as its connection attempt.
    url = f"127.0.0.1:{port}"
    timeout = {"IPAM_DB_CONNECTION_TIMEOUT": "100ms"}
    run("ADD", {"cniVersion": "0.3.0", "name": "n", "ipam": ipam}, IPAM_DB_PATH=f"etcd://{url}", **timeout)
    ca = os.path.join(work, "missing-ca.pem")
    tls = {"IPAM_DB_PATH": f"etcds://{url}", "IPAM_ETCD_CACERT": ca, **timeout}
    run("ADD", {"cniVersion": "0.3.0", "name": "n", "ipam": ipam}, **tls)
    ctl(["leases"], {**env, **tls}, io.StringIO(""), io.StringIO(), io.StringIO())


def main() -> None:
    out, spec_file = sys.argv[1:]
    with open(spec_file, encoding="utf-8") as f:
        spec = json.load(f)
    sys.path[:0] = spec["paths"]
    for name in spec["imports"]:
        try:
            import_module(name)
        except ImportError:
            # "from package import name" names an attribute as often as a submodule.
            if "." not in name:
                raise
    exercise(spec["work"], spec["port"])
    # The start-up codec and the ones a C locale (the agent's empty root) falls back to.
    for codec in ("ascii", "latin_1", "utf_8"):
        import_module(f"encodings.{codec}")
    loaded = sorted(sys.modules.items())
    files = {name: module.__file__ for name, module in loaded if getattr(module, "__file__", None)}
    del files["__main__"]  # this script
    # A module that put another in its place (3.13's collections.abc is _collections_abc,
    # which even takes its __name__: its spec tells):
    # the file imported under that name is looked up again, past sys.modules.
    finder = next(f for f in sys.meta_path if getattr(f, "__name__", "") == "PathFinder")
    for name, module in loaded:
        search = getattr(sys.modules.get(name.rpartition(".")[0]), "__path__", None)
        if name in files and getattr(module.__spec__, "name", name) != name and search is not None:
            spec = finder.find_spec(name, search)
            if spec is not None and spec.origin:
                files[name] = spec.origin
    with open(out, "w", encoding="utf-8") as f:
        json.dump(files, f, indent=1)


if __name__ == "__main__":
    main()
