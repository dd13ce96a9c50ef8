# Fixtures: real, private RabbitMQ and PostgreSQL servers started for the session
# (insectarium.testing), and the runtime helpers (tests/runtime_support.py).
pytest_plugins = ["insectarium.testing.pytest_plugin", "tests.runtime_support"]
