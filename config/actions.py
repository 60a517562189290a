"""The next-best-action catalogue: ``config/actions.toml`` as a tuple of frozen actions.

Each ``[[action]]`` table has ``id``, ``kind`` (``product`` or ``service``), ``category`` and,
for a product, ``risk`` (1..5 for R1..R5) and ``product_id``; optional ``sales`` (default: true
for products, false for services), ``triggers`` (the trigger moments the action is for; empty
= any), ``ttl_hours`` and ``title``, what the RM reads, by locale (``title = { en = "...",
"zh-CN" = "..." }``). Unknown keys, missing keys and bad values are errors naming the action.

>>> actions = load_actions()
>>> len(actions) >= 10, {a.kind for a in actions} == {"product", "service"}
(True, True)
>>> sorted({a.risk for a in actions if a.kind == "product"})
[1, 2, 3, 4, 5]
>>> [a.action_id for a in actions if a.kind == "service" and a.sales]
[]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from config.settings import ConfigError, read_toml
from detectors.nba import Action
from schemas.texts import LOCALES

DEFAULT_ACTIONS_PATH: Final = Path(__file__).with_name("actions.toml")
_KEYS: Final = {"id", "kind", "category", "risk", "product_id", "sales", "triggers", "ttl_hours", "title"}


def _action(entry: dict[str, Any], index: int) -> Action:
    name = entry.get("id", f"#{index}")
    unknown = set(entry) - _KEYS
    if unknown:
        raise ConfigError(f"action {name}: unknown keys {sorted(unknown)}")
    for key in ("id", "kind", "category"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ConfigError(f"action {name}: {key} must be a non-empty string")
    risk = entry.get("risk", 0)
    if isinstance(risk, bool) or not isinstance(risk, int):
        raise ConfigError(f"action {name}: risk must be an integer 1..5")
    triggers = entry.get("triggers", [])
    if not isinstance(triggers, list) or not all(isinstance(t, str) for t in triggers):
        raise ConfigError(f"action {name}: triggers must be a list of strings")
    sales = entry.get("sales")
    if sales is not None and not isinstance(sales, bool):
        raise ConfigError(f"action {name}: sales must be a boolean")
    ttl = entry.get("ttl_hours", 72.0)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise ConfigError(f"action {name}: ttl_hours must be a number")
    product_id = entry.get("product_id")
    if entry["kind"] == "product" and not isinstance(product_id, str):
        raise ConfigError(f"action {name}: a product needs a product_id")
    titles = entry.get("title", {})
    if not isinstance(titles, dict) or not all(isinstance(v, str) and v for v in titles.values()):
        raise ConfigError(f"action {name}: title must be a table of locale = \"text\"")
    unknown_locales = sorted(set(titles) - set(LOCALES))
    if unknown_locales:
        raise ConfigError(f"action {name}: title for unknown locales {unknown_locales}; expected {list(LOCALES)}")
    try:
        return Action(entry["id"], entry["kind"], entry["category"], risk, product_id, sales,
                      tuple(triggers), float(ttl), tuple(sorted(titles.items())))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def load_actions(path: str | Path | None = None) -> tuple[Action, ...]:
    """The catalogue in file order; ids must be unique."""
    file = Path(path) if path is not None else DEFAULT_ACTIONS_PATH
    entries = read_toml(file, "action catalogue").get("action", [])
    if not entries:
        raise ConfigError(f"{file}: no [[action]] entries")
    actions = tuple(_action(entry, i) for i, entry in enumerate(entries))
    ids = [a.action_id for a in actions]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"{file}: duplicate action ids {duplicates}")
    return actions
