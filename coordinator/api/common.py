"""What the API's modules share: the answer of a proposed change, and the types of amounts, names and ids."""
from __future__ import annotations

from typing import Annotated

from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from custody.governance import proposals as governance

ACCEPTED = {202: {"description": "proposed: the change waits for other admins' or officers' approval "
                                 "(custody.governance.proposals); the body is the proposal"}}


def proposed(s, proposal) -> JSONResponse:
    """The answer of a route that used to make a change and now proposes it: 202 with the proposal."""
    return JSONResponse(governance.proposal_json(s, proposal), status_code=202)


Amount = Annotated[StrictStr | StrictInt, Field(description="BTC as a decimal string (\"0.5\"), \"NNNsat\", or integer satoshis")]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Id = Annotated[int, PathParam(ge=1, le=2**31 - 1)]
Outpoint = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}:[0-9]{1,6}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
