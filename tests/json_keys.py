"""Every key of a report's JSON, nested, for the tests that check each one is documented."""

from __future__ import annotations


def json_keys(value, found: set[str] | None = None) -> set[str]:
    found = set() if found is None else found
    if isinstance(value, dict):
        for key, inner in value.items():
            found.add(key)
            json_keys(inner, found)
    elif isinstance(value, list):
        for inner in value:
            json_keys(inner, found)
    return found
