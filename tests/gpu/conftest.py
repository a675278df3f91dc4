import pytest


def _device_count() -> int:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver or no device: all mean "no CUDA device"
        return 0


def pytest_collection_modifyitems(config, items):
    if _device_count() > 0:
        return
    skip = pytest.mark.skip(reason="no CUDA device (CuPy sees none)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
