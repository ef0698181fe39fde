"""Build hook: the wheel carries the top-level policies/ as gateway/policies (one copy in git).

policies/ stays at the top of the repository (the documented layout: `policies.dir` defaults to it in a
checkout), so it cannot be a package directory of its own; build_py copies it into the built package,
where `gateway.serve.shipped_policies()` finds it in an installed (non-editable) package. Editable
installs and the source tree read policies/ in place, so nothing is copied for them.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithPolicies(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            target = Path(self.build_lib) / "gateway" / "policies"
            shutil.copytree(Path("policies"), target, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithPolicies})
