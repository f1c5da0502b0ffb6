"""Bodies of the probes (/health, /ready), for the OpenAPI document."""

from typing import Literal

from pydantic import BaseModel


class Alive(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
