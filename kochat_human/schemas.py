"""The label API's requests and responses: Pydantic models are its validation and its documentation."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

VOTE_ID = r"^[A-Za-z0-9_-]{8,64}$"


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VoteIn(Request):
    item: str = Field(max_length=64, description="the id of the item shown")
    kind: Literal["rank", "skip", "flag"] = "rank"
    ranking: list[StrictInt] | None = Field(default=None, max_length=16,
                                            description="for kind rank: the rank of the answer at each place on the screen, 0 = best; "
                                                        "equal ranks are ties")
    client_vote_id: str = Field(pattern=VOTE_ID, description="made by the page once per vote: a vote sent twice counts once")
    seconds: float | None = Field(default=None, ge=0, le=86400, description="time on the item as the page measured it")

    @model_validator(mode="after")
    def ranking_goes_with_rank(self) -> VoteIn:
        if self.kind == "rank" and self.ranking is None:
            raise ValueError("ranking: required for a vote of kind rank")
        if self.kind != "rank" and self.ranking is not None:
            raise ValueError(f"ranking: a {self.kind} carries no ranking")
        return self


class UndoIn(Request):
    client_vote_id: str = Field(pattern=VOTE_ID, description="the vote to undo (`last_vote` of /api/next)")


class Progress(BaseModel):
    done: int = Field(description="items this person has answered")
    total: int = Field(description="those plus the items open to them")


class ItemOut(BaseModel):
    id: str
    prompt: str
    answers: list[str] = Field(description="in this person's order on the screen")


class NextOut(BaseModel):
    annotator: str
    progress: Progress
    item: ItemOut | None = Field(description="None when nothing is left for this person")
    last_vote: str | None = Field(description="the client vote id that `u` undoes")
    guidelines: str


class VoteOut(BaseModel):
    """The page asks /api/next for what comes next (and the progress), so a vote's answer carries nothing more."""

    stored: bool = Field(description="False when this client vote id was stored already")


class UndoOut(BaseModel):
    undone: bool = Field(description="False when the vote was undone already")
