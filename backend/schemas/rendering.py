"""The one JSON rendering of what the service sends: response bodies, error bodies, the events
of a stream and the responses an Idempotency-Key stores. orjson, with datetimes in UTC as `Z`."""

from typing import Any

import orjson


def to_json(content: Any) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_UTC_Z)
