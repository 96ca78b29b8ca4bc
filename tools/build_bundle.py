#!/usr/bin/env python3
"""Build the self-contained plugin bundle: ecs-ipam for a root with no libc and no Python.

    python tools/build_bundle.py [--out DIR]

Writes ``DIR/ecs-ipam-<version>-linux-<machine>.tar.gz`` (default DIR: ``dist/``), adds
its line to ``DIR/SHA256SUMS``, and prints the archive's path as the last line.  Unpacked
into a plugin directory, the archive adds::

    ecs-ipam        static launchers (tools/bundle/launcher.c): they find ecs-ipam.d beside
    ecs-ipamctl     their real path and run its interpreter through its own dynamic loader
    ecs-ipam.d/     bin/python3, lib/ (the loader, libc and every library the interpreter
                    and its extension modules need), lib/pythonX.Y/ (the modules the
                    commands use, as precompiled .pyc files), LICENSES

The interpreter bundled is the one this script runs under (a venv's base interpreter).
The modules are those ``tools/bundle/exercise.py`` loads while it runs every command.
Needs a C compiler that links statically (Debian: gcc, libc6-dev), ``ldd`` and ``strip``.

The bytes depend only on the checkout and those inputs: entries are sorted, owned by 0:0,
dated ``SOURCE_DATE_EPOCH`` (default: the last commit's time), the .pyc files are
unchecked-hash ones, and the gzip header carries no time or name.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import email.parser
import glob
import gzip
import hashlib
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent / "bundle"
PRIVATE = "ecs-ipam.d"
# The launchers' names; what each runs comes from setup.cfg's console_scripts, the same
# entry points as pip's scripts.  CNI callers read a plugin's errors on stdout.
LAUNCHERS = {"ecs-ipam": True, "ecs-ipamctl": False}
DEPENDENCIES = ("lmdb", "msgpack", "netaddr")
PY = f"python{sys.version_info[0]}.{sys.version_info[1]}"


class BuildError(Exception):
    """The bundle cannot be built here; the message says what is missing."""


def run(*args: str, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    except FileNotFoundError as error:
        raise BuildError(f"{args[0]} is missing: {error}") from None
    if done.returncode:
        raise BuildError(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def base_interpreter() -> Path:
    """The real interpreter behind this one (a venv's python is a symlink to it)."""
    return Path(os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable))


def version() -> str:
    text = (ROOT / "ecs_ipam" / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if not found:
        raise BuildError("ecs_ipam/__init__.py has no __version__")
    return found.group(1)


def source_date_epoch() -> int:
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        return int(run("git", "-C", str(ROOT), "log", "-1", "--format=%ct").strip())
    except (BuildError, ValueError):
        return 0


def dependency_dirs() -> list[str]:
    """The directories that hold the dependencies, as the interpreter path needs them."""
    dirs = []
    for name in DEPENDENCIES:
        spec = find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise BuildError(f"{name} is not installed: pip install '.[bundle]'")
        dirs.append(str(Path(next(iter(spec.submodule_search_locations))).parent))
    return list(dict.fromkeys(dirs))


def named_imports(package_dir: Path) -> list[str]:
    """Every absolute module name the package imports anywhere, except for type checkers."""
    names: set[str] = set()
    for source in sorted(package_dir.rglob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return sorted(names)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def used_modules(python: Path, paths: list[str], work: Path) -> dict[str, str]:
    """``{module: file}`` of every module the commands load, run under the bundle's flags."""
    out, spec, scratch = work / "modules.json", work / "exercise.json", work / "exercise"
    scratch.mkdir()
    imports = named_imports(ROOT / "ecs_ipam")
    spec.write_text(json.dumps({"paths": paths, "imports": imports, "work": str(scratch), "port": free_port()}))
    run(str(python), "-I", "-S", str(HERE / "exercise.py"), str(out), str(spec))
    modules: dict[str, str] = json.loads(out.read_text(encoding="utf-8"))
    return modules


def destination(file: str, roots: list[str]) -> str:
    """Where *file* goes under the bundle's lib/pythonX.Y, relative to its sys.path entry."""
    for root in sorted(roots, key=len, reverse=True):
        if file.startswith(root.rstrip("/") + "/"):
            return os.path.relpath(file, root)
    raise BuildError(f"{file} lies outside the interpreter's path")


def shared_libraries(elves: list[Path]) -> tuple[dict[str, Path], Path]:
    """The libraries the ELF files need, ``{soname: file}``, and the dynamic loader."""
    needed: dict[str, Path] = {}
    loader = None
    for elf in elves:
        for line in run("ldd", str(elf)).splitlines():
            line = line.strip()
            if "=>" in line:
                name, _, rest = line.partition("=>")
                target = rest.split("(")[0].strip()
                if target == "not found" or not target:
                    raise BuildError(f"{elf} needs {name.strip()}, which is not found")
                needed[name.strip()] = Path(target)
            elif line.startswith("/"):
                loader = Path(line.split("(")[0].strip())
    if loader is None:
        raise BuildError(f"ldd names no dynamic loader for {elves[0]}")
    # glibc loads libgcc_s on demand (a thread's exit unwinds with it); no NEEDED names it.
    if "libc.so.6" in needed:
        libgcc = Path(os.path.realpath(needed["libc.so.6"])).parent / "libgcc_s.so.1"
        if libgcc.is_file():
            needed.setdefault("libgcc_s.so.1", libgcc)
    return needed, loader


def copy_binary(source: Path, target: Path) -> None:
    """Copy an ELF file without its debugging sections (libpython's are most of its size)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    run("strip", "--strip-debug", "-o", str(target), os.path.realpath(source))
    target.chmod(0o755)


def entry_points() -> dict[str, str]:
    """``{script: "module:function"}`` of setup.cfg's console_scripts."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    lines = config.get("options.entry_points", "console_scripts").strip().splitlines()
    return {name.strip(): target.strip() for name, _, target in (line.partition("=") for line in lines)}


def compile_launchers(loader: str, bin_dir: Path) -> None:
    compiler = os.environ.get("CC", "cc")
    scripts = entry_points()
    for name, cni_errors in LAUNCHERS.items():
        module, function = scripts[name].split(":")
        entry = f"import sys; from {module} import {function}; sys.exit({function}())"
        macros = {"BUNDLE_DIR": PRIVATE, "LOADER": loader, "ENTRY": entry}
        args = [compiler, "-static", "-O2", "-s", "-Wall", f"-DCNI_ERRORS={int(cni_errors)}"]
        args += [f"-D{key}={json.dumps(value)}" for key, value in macros.items()]
        run(*args, "-o", str(bin_dir / name), str(HERE / "launcher.c"))


# Unchecked-hash .pyc files in place of the sources: nothing is ever compiled (or even
# checked) at a call, and the bytes depend on the sources alone, not on their mtimes nor on
# this machine's paths.  In a process of its own with a fixed hash seed: a set constant is
# marshalled in iteration order, which the seed decides.
COMPILE = """
import json, py_compile, sys
with open(sys.argv[1]) as f:
    jobs = json.load(f)
for source, target, name in jobs:
    mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
    py_compile.compile(source, cfile=target, dfile=name, doraise=True, invalidation_mode=mode)
"""


def compile_modules(python: Path, jobs: list[tuple[str, Path, str]], work: Path) -> None:
    """Compile each ``(source, target, name shown in tracebacks)``."""
    for _, target, _ in jobs:
        target.parent.mkdir(parents=True, exist_ok=True)
    listing = work / "compile.json"
    listing.write_text(json.dumps([(source, str(target), name) for source, target, name in jobs]))
    run(str(python), "-S", "-c", COMPILE, str(listing), env={"PYTHONHASHSEED": "0"})


def dist_info(name: str, directory: str) -> tuple[str, str, list[Path]]:
    """(version, licence, licence files) of an installed distribution, from its metadata."""
    for meta_dir in sorted(glob.glob(os.path.join(directory, f"{name}-*.dist-info"))):
        meta = email.parser.Parser().parsestr(Path(meta_dir, "METADATA").read_text(encoding="utf-8"))
        classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License")]
        licence = meta.get("License-Expression") or meta.get("License") or ", ".join(classifiers) or "see below"
        licence_file = re.compile(r"(LICEN[CS]E|COPYING)", re.IGNORECASE)
        files = sorted(p for p in Path(meta_dir).rglob("*") if p.is_file() and licence_file.match(p.name))
        return str(meta.get("Version")), licence.splitlines()[0], files
    return "?", "see the project", []


def debian_package(path: Path) -> tuple[str, str, Path | None]:
    """(package, version, copyright file) that installed *path*, when dpkg knows it."""
    try:
        package = run("dpkg", "-S", os.path.realpath(path)).split(":")[0]
        package_version = run("dpkg-query", "-W", "-f", "${Version}", package)
    except BuildError:
        return "", "", None
    copyright_file = Path("/usr/share/doc") / package.split(":")[0] / "copyright"
    return package, package_version, copyright_file if copyright_file.is_file() else None


def licences(libraries: dict[str, Path], python: Path, dep_dirs: list[str]) -> str:
    """The LICENSES file: one line per component, then each licence text."""
    lines = [f"The ecs-ipam bundle {version()} holds these components, each under its own licence.", ""]
    texts: dict[str, str] = {}
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lines.append(f"ecs-ipam {version()}: this project (ecs_ipam/)")
    cpython = f"CPython {platform.python_version()}"
    package, package_version, copyright_file = debian_package(python)
    if package:
        cpython += f" (Debian package {package} {package_version})"
        if copyright_file:
            texts[package] = copyright_file.read_text(encoding="utf-8", errors="replace")
    lines.append(f"{cpython}: Python Software Foundation License Version 2 (PSF-2.0)")
    if (stdlib / "LICENSE.txt").is_file():
        texts["CPython"] = (stdlib / "LICENSE.txt").read_text(encoding="utf-8")
    for name in DEPENDENCIES:
        for directory in dep_dirs:
            dep_version, licence, files = dist_info(name, directory)
            if dep_version != "?":
                lines.append(f"{name} {dep_version} (Python package): {licence}")
                for file in files:
                    texts[f"{name}: {file.name}"] = file.read_text(encoding="utf-8", errors="replace")
                break
    for soname, path in sorted(libraries.items()):
        package, package_version, copyright_file = debian_package(path)
        if package:
            lines.append(f"{soname}: Debian package {package} {package_version}, licence below")
            if copyright_file:
                texts[package] = copyright_file.read_text(encoding="utf-8", errors="replace")
        else:
            lines.append(f"{soname}: part of {cpython}")
    lines.append("")
    for title, text in texts.items():
        lines += ["=" * 78, title, "=" * 78, text.rstrip(), ""]
    return "\n".join(lines)


def stage(tree: Path, work: Path) -> None:
    """Lay out the bundle's files under *tree*."""
    python = base_interpreter()
    private = tree / PRIVATE
    lib = private / "lib"
    site = lib / PY
    dep_dirs = dependency_dirs()
    stdlib_paths = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]]
    modules = used_modules(python, [str(ROOT), *dep_dirs], work)

    roots = [str(ROOT), *dep_dirs, *stdlib_paths]
    jobs = []
    for name, file in modules.items():
        relative = destination(file, roots)
        if file.endswith(".py"):
            jobs.append((file, site / (relative + "c"), relative))
        elif file.endswith(".so"):
            copy_binary(Path(file), site / relative)
        else:
            raise BuildError(f"module {name} is {file}: neither source nor extension")
    # The whole package, whatever the exercise reached; and the git state --version prints.
    for source in sorted((ROOT / "ecs_ipam").rglob("*.py")):
        relative = str(source.relative_to(ROOT))
        jobs.append((str(source), site / (relative + "c"), relative))
    build = work / "_build.py"
    dirty, short_hash = _git_state()
    build.write_text(f'"""Written by tools/build_bundle.py."""\n\nDIRTY = {dirty!r}\nGIT_SHORT_HASH = {short_hash!r}\n')
    jobs.append((str(build), site / "ecs_ipam" / "_build.pyc", "ecs_ipam/_build.py"))
    compile_modules(python, sorted(set(jobs)), work)

    copy_binary(python, private / "bin" / "python3")
    libraries, loader = shared_libraries([python, *(Path(f) for f in modules.values() if f.endswith(".so"))])
    for soname, path in libraries.items():
        copy_binary(path, lib / soname)
    copy_binary(loader, lib / loader.name)
    compile_launchers(loader.name, tree)
    (private / "LICENSES").write_text(licences(libraries, python, dep_dirs), encoding="utf-8")


def _git_state() -> tuple[bool, str]:
    sys.path.insert(0, str(ROOT / "ecs_ipam"))
    try:
        from build_info import read_git_state  # type: ignore[import-not-found]  # loaded by path: no deps needed
    finally:
        sys.path.pop(0)
    state: tuple[bool, str] = read_git_state(str(ROOT))
    return state


def archive(tree: Path, target: Path, mtime: int) -> None:
    """A tar.gz of *tree* whose bytes depend only on the files: sorted, 0:0, one date."""

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = mtime
        info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
        return info

    paths = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in paths:
            tar.add(tree / path, arcname=path, recursive=False, filter=normalise)
    target.write_bytes(gzip.compress(data.getvalue(), compresslevel=9, mtime=0))


def write_checksum(target: Path) -> None:
    """Add (or replace) the archive's line in SHA256SUMS beside it."""
    sums = target.parent / "SHA256SUMS"
    lines = {}
    if sums.is_file():
        for line in sums.read_text(encoding="utf-8").splitlines():
            digest, _, name = line.partition("  ")
            lines[name] = digest
    lines[target.name] = hashlib.sha256(target.read_bytes()).hexdigest()
    sums.write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(lines.items())), encoding="utf-8")


def build(out: Path) -> Path:
    if sys.platform != "linux":
        raise BuildError("the bundle is built on Linux, for the machine it is built on")
    mtime = source_date_epoch()
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"ecs-ipam-{version()}-linux-{platform.machine()}.tar.gz"
    with tempfile.TemporaryDirectory(prefix="ecs-ipam-bundle-") as scratch:
        tree, work = Path(scratch, "tree"), Path(scratch, "work")
        tree.mkdir()
        work.mkdir()
        stage(tree, work)
        partial = out / f".{target.name}.partial"
        archive(tree, partial, mtime)
        partial.replace(target)
    write_checksum(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_bundle.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where the archive goes (default: dist/)")
    args = parser.parse_args(argv)
    try:
        target = build(args.out)
    except BuildError as error:
        print(f"build_bundle.py: error: {error}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
