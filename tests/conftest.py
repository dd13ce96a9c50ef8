import importlib.util

pytest_plugins = ["tests.runtime_support"]
try:
    if importlib.util.find_spec("insectarium.testing.pytest_plugin") is not None:
        pytest_plugins.append("insectarium.testing.pytest_plugin")
except ModuleNotFoundError:
    pass
