"""pytest plugin (-p tail_on, this folder on PYTHONPATH): the GPU tests with decode.TAIL_SPLITS on, in every
xdist worker, before the measurement makes it the default. Set per test after its fixtures (some reload the
module), and imported only then (conftest picks the interpreter before anything imports Triton)."""
import importlib

import pytest


@pytest.hookimpl(trylast=True)
def pytest_runtest_setup(item):
    importlib.import_module("mustafar.kernels.decode").TAIL_SPLITS = True
