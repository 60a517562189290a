"""Write the JSON Schema of every input event kind to ``schemas/jsonschema/`` for producers.

    python -m schemas.publish
"""

from __future__ import annotations

from pathlib import Path

import orjson

from schemas.events import KIND_FIELDS, json_schema

TARGET = Path(__file__).with_name("jsonschema")


def publish(target: Path = TARGET) -> list[Path]:
    """Write one ``<kind>.json`` per event kind; return the paths written."""
    target.mkdir(exist_ok=True)
    written = []
    for kind in KIND_FIELDS:
        path = target / f"{kind}.json"
        path.write_bytes(orjson.dumps(json_schema(kind), option=orjson.OPT_INDENT_2) + b"\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in publish():
        print(path)
