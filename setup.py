"""Build shim: the metadata lives in setup.cfg.

The one thing setup.cfg cannot say: an installed package has no git checkout to ask,
so ``ecs-ipam --version`` reads the git state recorded here, at build time, in
``ecs_ipam/_build.py`` (see ``ecs_ipam/build_info.py``).
"""

import importlib.util
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def git_state() -> tuple[bool, str]:
    # Loaded by path: importing the package would need its dependencies at build time.
    path = os.path.join(HERE, "ecs_ipam", "build_info.py")
    spec = importlib.util.spec_from_file_location("build_info", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    build_info = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_info)
    state: tuple[bool, str] = build_info.read_git_state(HERE)
    return state


class BuildPyWithGitState(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            # An editable install runs from the checkout, which git answers for itself.
            return
        dirty, short_hash = git_state()
        target = os.path.join(self.build_lib, "ecs_ipam", "_build.py")
        with open(target, "w", encoding="utf-8") as f:
            f.write(f'"""Written at build time by setup.py."""\n\nDIRTY = {dirty!r}\nGIT_SHORT_HASH = {short_hash!r}\n')


setup(cmdclass={"build_py": BuildPyWithGitState})
