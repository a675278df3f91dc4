"""The bench scripts as modules, for the tests that check them."""
import importlib.util
from pathlib import Path


def bench_module(name: str):
    """bench/<name>.py, imported (the bench folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
