"""Judge the lab's secrets without ever showing them: ``lab_secret_problems``.

Given ``{variable name: value}`` (values may be strings or nested mappings/lists, e.g.
``vault_dripline_passwords``), return one line per problem naming the variable (and key) and
what is wrong: unset, a placeholder (``CHANGE_ME``, ``test-only-…``), shorter than the minimum,
a single repeated character, few distinct characters, or the same value as another secret.
The values themselves never appear in the result.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

PLACEHOLDERS = re.compile(
    r"change[-_ ]?me|changeit|test[-_ ]?only|placeholder|example|dummy|secret|password|"
    r"passwd|letmein|qwerty|123456|xxxx|todo|fixme",
    re.IGNORECASE,
)


def _leaves(name: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            yield from _leaves(f"{name}.{key}", sub)
    elif isinstance(value, list | tuple):
        for i, sub in enumerate(value):
            yield from _leaves(f"{name}[{i}]", sub)
    else:
        yield name, value


def lab_secret_problems(secrets: Mapping[str, Any], min_length: int = 16) -> list[str]:
    """One ``"<name>: <problem>"`` line per placeholder, weak or reused secret."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for name in sorted(secrets):
        for where, value in _leaves(name, secrets[name]):
            text = "" if value is None else str(value)
            if not text:
                problems.append(f"{where}: not set")
                continue
            if PLACEHOLDERS.search(text):
                problems.append(f"{where}: a placeholder or a common word, not a secret")
            elif len(text) < min_length:
                problems.append(f"{where}: shorter than {min_length} characters")
            elif len(set(text)) < max(6, min_length // 3):
                problems.append(f"{where}: too few distinct characters")
            if text in seen:
                problems.append(f"{where}: same value as {seen[text]} (use one secret per account)")
            else:
                seen[text] = where
    return problems


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Any]:
        return {"lab_secret_problems": lab_secret_problems}
