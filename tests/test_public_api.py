"""The top level: every exported name resolves, and importing the package stays quick."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ssl_toolkit


@pytest.mark.parametrize("name", ssl_toolkit.__all__)
def test_every_exported_name_resolves(name):
    assert getattr(ssl_toolkit, name) is not None


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        ssl_toolkit.no_such_thing  # noqa: B018


def test_importing_the_package_loads_no_torch():
    command = "import sys, ssl_toolkit; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", command], capture_output=True, text=True).stdout.strip()
        == "False"
    )
