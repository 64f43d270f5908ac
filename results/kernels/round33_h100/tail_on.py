"""pytest plugin (-p tail_on, this folder on PYTHONPATH): the GPU tests with decode.TAIL_SPLITS on, in every
xdist worker, before the measurement makes it the default."""
from mustafar.kernels import decode


def pytest_configure(config):
    decode.TAIL_SPLITS = True
