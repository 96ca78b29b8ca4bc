"""The package as users get it: its metadata, its imports, and a fresh install."""

from __future__ import annotations

import ast
import configparser
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

import ecs_ipam

ROOT = Path(__file__).resolve().parent.parent

# ipaddress: netaddr is the one address library, so that every module agrees on parsing.
# importlib.metadata / pkg_resources: slow to import on every plugin start, and wrong
# for a checkout that is not installed; the version lives in ecs_ipam.__version__.
FORBIDDEN_MODULES = {"ipaddress", "importlib.metadata", "pkg_resources"}


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    assert parser.read(ROOT / "setup.cfg"), "setup.cfg is missing"
    return parser


def requirements() -> dict[str, str]:
    lines = setup_cfg()["options"]["install_requires"].split("\n")
    pinned = {}
    for line in filter(None, (line.strip() for line in lines)):
        name = line.split(">")[0].split("<")[0].split("=")[0].strip()
        pinned[name] = line[len(name) :].replace(" ", "")
    return pinned


def test_lmdb_major_version_is_pinned():
    # lmdb 3.x bundles an on-disk format that 2.x cannot read, and the reverse.
    assert requirements()["lmdb"] == ">=2,<3"


def test_runtime_dependencies_are_exactly_the_three():
    assert requirements() == {"lmdb": ">=2,<3", "msgpack": ">=1,<2", "netaddr": ">=1,<2"}


def test_lint_tools_are_pinned_below_their_next_breaking_release():
    lines = setup_cfg()["options.extras_require"]["lint"].split("\n")
    pins = [line.strip() for line in lines if line.strip()]
    assert {pin.split(">")[0] for pin in pins} >= {"mypy", "ruff"}
    assert all(">=" in pin and ",<" in pin for pin in pins), pins


def test_pyproject_holds_tool_settings_only():
    # setup.cfg and setup.py are the packaging: no [build-system], no [project].
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert set(settings) == {"tool"}


def test_the_package_is_marked_as_typed():
    assert (ROOT / "ecs_ipam" / "py.typed").is_file()
    assert setup_cfg()["options.package_data"]["ecs_ipam"].split() == ["py.typed"]


def test_console_scripts_are_the_plugin_and_the_operator_tool():
    scripts = setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines()
    assert scripts == ["ecs-ipam = ecs_ipam.entry:run", "ecs-ipamctl = ecs_ipam.ctl.cli:main"]


def find_packages(exclude: list[str]) -> set[str]:
    """What setuptools' ``find_packages`` finds, without setuptools (venvs of 3.12 on have none):
    the folders with an ``__init__.py`` under the root, through such folders only, less the
    names that match a pattern."""
    found = set()
    folders = [path for path in ROOT.iterdir() if (path / "__init__.py").is_file()]
    while folders:
        folder = folders.pop()
        name = ".".join(folder.relative_to(ROOT).parts)
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude):
            found.add(name)
        folders.extend(path for path in folder.iterdir() if (path / "__init__.py").is_file())
    return found


def test_the_packages_found_include_every_subpackage_and_no_tests_or_tools():
    exclude = [line.strip() for line in setup_cfg()["options.packages.find"]["exclude"].splitlines() if line.strip()]
    found = find_packages(exclude)
    modules = {path.parent for path in (ROOT / "ecs_ipam").rglob("*.py")}
    subpackages = {".".join(folder.relative_to(ROOT).parts) for folder in modules}
    # A folder of modules without __init__.py would be left out of the wheel.
    assert all((folder / "__init__.py").is_file() for folder in modules), sorted(modules)
    assert {"ecs_ipam", "ecs_ipam.kv", "ecs_ipam.ctl", "ecs_ipam.kv.etcd"} <= subpackages
    assert found == subpackages


def test_version_is_a_literal_setuptools_reads_without_importing():
    tree = ast.parse((ROOT / "ecs_ipam" / "__init__.py").read_text())
    versions = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
        and isinstance(node.value, ast.Constant)
    ]
    assert versions == [ecs_ipam.__version__]
    assert setup_cfg()["metadata"]["version"].strip() == "attr: ecs_ipam.__version__"


def imported_modules(tree: ast.AST) -> set[str]:
    """Every module an AST imports, with ``from a import b`` counted as ``a`` and ``a.b``."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def forbidden_in(tree: ast.AST) -> set[str]:
    modules = imported_modules(tree)
    return {
        module
        for module in modules
        for forbidden in FORBIDDEN_MODULES
        if module == forbidden or module.startswith(forbidden + ".")
    }


def test_the_scan_sees_every_spelling_of_an_import():
    source = (
        "import ipaddress\n"
        "from importlib import metadata\n"
        "import pkg_resources.extern\n"
        "def f():\n"
        "    from importlib.metadata import version\n"
        "    return importlib.import_module('ipaddress')\n"
        "import importlib.resources, netaddr\n"
    )
    assert forbidden_in(ast.parse(source)) == {
        "ipaddress",
        "importlib.metadata",
        "importlib.metadata.version",
        "pkg_resources.extern",
    }


@pytest.mark.parametrize("folder", ["ecs_ipam", "tools"])
def test_no_module_imports_ipaddress_or_package_metadata(folder):
    sources = sorted((ROOT / folder).rglob("*.py"))
    if folder == "ecs_ipam":
        assert sources, "no modules found: the scan would prove nothing"
    offenders = {
        str(path.relative_to(ROOT)): sorted(found)
        for path in sources
        if (found := forbidden_in(ast.parse(path.read_text(), str(path))))
    }
    assert offenders == {}


def copy_source_tree(destination: Path) -> Path:
    """Copy the checkout as a user would get it: no venv, caches or build output."""
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.pyc", "build", "dist", "*.egg-info", ".pytest_cache", ".hypothesis"
    )
    return Path(shutil.copytree(ROOT, destination / "src", ignore=ignore))


@pytest.mark.slow
def test_wheel_ships_the_typed_marker_and_only_the_package(tmp_path):
    source = copy_source_tree(tmp_path)
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("ecs_ipam-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ecs_ipam/py.typed" in names
    assert {"ecs_ipam/__init__.py", "ecs_ipam/kv/__init__.py", "ecs_ipam/errors.py"} <= set(names)
    assert [name for name in names if name.startswith(("tests/", "tools/"))] == []


@pytest.mark.slow
def test_fresh_venv_install_runs_the_plugin(tmp_path):
    source = copy_source_tree(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    install = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    clean_env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    version = subprocess.run(
        [str(bin_dir / "ecs-ipam"), "--version"],
        capture_output=True,
        text=True,
        env=clean_env,
        cwd=tmp_path,
        timeout=60,
    )
    assert version.returncode == 0, version.stderr
    assert json.loads(version.stdout)["version"] == ecs_ipam.__version__

    cni_version = subprocess.run(
        [str(bin_dir / "ecs-ipam")],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=dict(clean_env, CNI_COMMAND="VERSION"),
    )
    assert cni_version.returncode == 0, cni_version.stderr
    supported = json.loads(cni_version.stdout)["supportedVersions"]
    assert {"0.3.0", "1.0.0"} <= set(supported)

    # The operator tool is installed with it, and answers without a database.
    ctl = subprocess.run(
        [str(bin_dir / "ecs-ipamctl"), "--db", str(tmp_path / "none.db"), "usage"],
        capture_output=True,
        text=True,
        env=clean_env,
        cwd=tmp_path,
        timeout=60,
    )
    assert (ctl.returncode, ctl.stderr) == (1, f"ecs-ipamctl: error: no database at {tmp_path / 'none.db'}\n")
    assert not (tmp_path / "none.db").exists()

    # Only the package is installed: neither the tests nor the tools.
    probe = subprocess.run(
        [
            str(bin_dir / "python"),
            "-c",
            "import importlib.util as u; print([n for n in ('tests', 'tools') if u.find_spec(n)])",
        ],
        capture_output=True,
        text=True,
        env=clean_env,
        cwd=tmp_path,
        timeout=60,
    )
    assert probe.stdout.strip() == "[]", probe.stderr
