"""Broker permissions of dripline accounts: the one place that says who may do what.

RabbitMQ checks two things (https://www.rabbitmq.com/docs/access-control):

* resource permissions, three regexes per vhost matched against exchange and queue names:
  ``configure`` (declare, delete), ``write`` (publish to an exchange, bind *to* a queue) and
  ``read`` (consume or purge a queue, bind a queue *from* an exchange);
* topic permissions, two regexes per topic exchange matched against routing keys: ``write`` on
  every publish, ``read`` on every binding key.  A user without topic permissions on an exchange
  may use any key, so every account gets them on both dripline exchanges.

No regex here matches the empty name: write access to the default exchange ("") would let a
user drop messages straight into any queue, past every topic permission.

The rabbitmq role applies these through ``community.rabbitmq.rabbitmq_user``; the pytest suite
imports this file to give a private broker exactly the same permissions, so the tests that try
each forbidden action test what the role deploys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

# Matches nothing (not even ""): for accounts that must not touch a resource at all.
NOTHING = "(?!)"
# Reply queues of dripline clients: server-named (dripline-cpp) or amq_<uuid hex> (insectarium).
REPLY_QUEUES = r"amq\.gen-.*|amq_[0-9a-f]+"


def _alternatives(names: Iterable[str]) -> str:
    return "|".join(re.escape(n) for n in names)


def _whole(*alternatives: str) -> str:
    parts = [a for a in alternatives if a]
    return f"^({'|'.join(parts)})$" if parts else NOTHING


def _endpoint_keys(endpoints: Iterable[Any], default_prefix: str) -> list[str]:
    keys = []
    for ep in endpoints:
        if isinstance(ep, Mapping):
            keys.append(f"{ep.get('log_routing_key_prefix') or default_prefix}.{ep['name']}")
        else:
            keys.append(f"{default_prefix}.{ep}")
    return keys


def _endpoint_names(endpoints: Iterable[Any]) -> list[str]:
    return [str(ep["name"]) if isinstance(ep, Mapping) else str(ep) for ep in endpoints]


def dripline_service_permissions(
    service: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    vhost: str = "/",
    requests_exchange: str = "requests",
    alerts_exchange: str = "alerts",
    reply_queues: str = REPLY_QUEUES,
    broadcast_key: str = "broadcast",
    heartbeat_key: str = "heartbeat",
    sensor_value_prefix: str = "sensor_value",
    status_message_key: str = "status_message",
) -> dict[str, list[dict[str, str]]]:
    """Permissions of one dripline service account.

    ``service``: ``{name, extra_queues, endpoints, alert_keys, processes}`` (one item of the
    lab's program list); ``endpoints`` defaults to the ``endpoints`` of ``config`` (the service's
    YAML file), ``alert_keys`` (binding keys it may use on the alerts exchange) to none.  With
    ``processes`` N > 1 (the sensor logger scaled out) the account also runs the services
    ``<name>-2`` … ``<name>-N`` (no endpoints of their own): their queues, ``<name>-k.#`` and
    ``heartbeat.<name>-k`` are allowed as well, and no other name.

    The service may: declare and use its own queues and reply queues; bind its queue on requests
    to ``<name>.#``, ``broadcast.#`` and ``<endpoint>.#``; send any request and reply; publish on
    alerts only ``sensor_value.<its endpoints>``, ``heartbeat.<name>`` and ``status_message.*``;
    bind on alerts only with ``alert_keys``.
    """
    name = str(service["name"])
    config = config or {}
    if config.get("name") not in (None, name):
        raise ValueError(
            f"service {name}: its config names the service {config.get('name')!r}; the broker "
            "user, the queue and the service must share one name"
        )
    endpoints = service.get("endpoints")
    if endpoints is None:
        endpoints = config.get("endpoints") or []
    names = [name] + [f"{name}-{k}" for k in range(2, int(service.get("processes") or 1) + 1)]
    own_queues = _alternatives([*names, *service.get("extra_queues", [])])
    exchanges = _alternatives([requests_exchange, alerts_exchange])
    alert_keys = list(service.get("alert_keys") or [])
    read_exchanges = _alternatives([requests_exchange] + ([alerts_exchange] if alert_keys else []))
    bindings = [f"{n}.#" for n in [*names, broadcast_key, *_endpoint_names(endpoints)]]
    alerts_out = [
        _alternatives(_endpoint_keys(endpoints, sensor_value_prefix)),
        _alternatives(f"{heartbeat_key}.{n}" for n in names),
        re.escape(f"{status_message_key}.") + ".+",
    ]
    return {
        "permissions": [
            {
                "vhost": vhost,
                "configure_priv": _whole(exchanges, own_queues, reply_queues),
                "write_priv": _whole(exchanges, own_queues, reply_queues),
                "read_priv": _whole(read_exchanges, own_queues, reply_queues),
            }
        ],
        "topic_permissions": [
            {
                "vhost": vhost,
                "exchange": requests_exchange,
                "write_priv": "^.+$",
                "read_priv": _whole(_alternatives(bindings), reply_queues),
            },
            {
                "vhost": vhost,
                "exchange": alerts_exchange,
                "write_priv": _whole(*alerts_out),
                "read_priv": _whole(_alternatives(alert_keys)),
            },
        ],
    }


def dripline_human_permissions(
    vhost: str = "/",
    requests_exchange: str = "requests",
    alerts_exchange: str = "alerts",
    reply_queues: str = REPLY_QUEUES,
    status_message_key: str = "status_message",
) -> dict[str, list[dict[str, str]]]:
    """Permissions of the shifters' account (dl-agent, dl-mon, dragonfly, Interface).

    Requests to any endpoint, their replies, watching any alert, posting ``status_message.*``.
    Not: replies on others' behalf, any other alert (``sensor_value.*``, ``heartbeat.*``),
    binding on requests (other than its reply queues), touching any service's queue.
    """
    exchanges = _alternatives([requests_exchange, alerts_exchange])
    return {
        "permissions": [
            {
                "vhost": vhost,
                "configure_priv": _whole(exchanges, reply_queues),
                "write_priv": _whole(exchanges, reply_queues),
                "read_priv": _whole(exchanges, reply_queues),
            }
        ],
        "topic_permissions": [
            {
                "vhost": vhost,
                "exchange": requests_exchange,
                "write_priv": f"^(?!({reply_queues})$).+$",
                "read_priv": _whole(reply_queues),
            },
            {
                "vhost": vhost,
                "exchange": alerts_exchange,
                "write_priv": _whole(re.escape(f"{status_message_key}.") + ".+"),
                "read_priv": "^.*$",
            },
        ],
    }


def dripline_admin_permissions(vhost: str = "/") -> dict[str, list[dict[str, str]]]:
    """The administrator manages the broker (management UI, rabbitmqctl) and nothing else: it
    may not declare, publish or consume on the dripline vhost, so no service can run as it."""
    return {
        "permissions": [
            {
                "vhost": vhost,
                "configure_priv": NOTHING,
                "write_priv": NOTHING,
                "read_priv": NOTHING,
            }
        ],
        "topic_permissions": [],
    }


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Any]:
        return {
            "dripline_service_permissions": dripline_service_permissions,
            "dripline_human_permissions": dripline_human_permissions,
            "dripline_admin_permissions": dripline_admin_permissions,
        }
