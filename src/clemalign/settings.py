"""Parameter dictionaries: defaults overridden by the config."""

from __future__ import annotations

import copy


def merge_params(defaults: dict, overrides: dict | None) -> dict:
    """Deep copy of ``defaults`` updated by ``overrides`` (nested dicts merged key by key,
    anything else, lists included, replaced)."""
    merged = copy.deepcopy(defaults)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_params(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
