"""The configuration reference is generated from the settings module and kept current."""

import subprocess
import sys

from tests.support import ROOT


def test_configuration_reference_is_current():
    result = subprocess.run(
        [sys.executable, "docs/generate_configuration.py", "--check"], cwd=ROOT, check=False
    )
    assert result.returncode == 0, "run: python docs/generate_configuration.py"
