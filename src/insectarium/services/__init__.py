"""The lab services, ported from Project 8 dragonfly to the insectarium dripline runtime.

Classes are found by name from a config's ``module:`` key (``dl-serve``); heavy dependencies
(database drivers) are imported only by the services that need them.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "KeyValueStore": "kv_store",
    "MultiDo": "multido",
    "MultiGet": "multido",
    "MultiSet": "multido",
    "DAQService": "daq",
    "GenericDAQProvider": "daq",
    "TestingDAQProvider": "daq",
    "MDReceiver": "metadata",
    "PostgreSQLService": "postgres",
    "SensorLogger": "sensor_logger",
    "SensorLoggerStatus": "sensor_logger",
    "SQLSnapshot": "snapshot",
    "SQLTable": "sql_table",
    "RunTable": "run_table",
}

__all__ = [  # noqa: RUF022 - grouped as in _LAZY
    "KeyValueStore",
    "MultiDo",
    "MultiGet",
    "MultiSet",
    "DAQService",
    "GenericDAQProvider",
    "TestingDAQProvider",
    "MDReceiver",
    "PostgreSQLService",
    "SensorLogger",
    "SensorLoggerStatus",
    "SQLSnapshot",
    "SQLTable",
    "RunTable",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(name)
