"""Pydantic v2 models of every JSON request and response of the HTTP API.

Shapes that depend on the loaded checkpoint (384 values per embedding, 4 codes per row,
codes below 256) cannot be fixed here; the routes check them with ``vqvae.check_embeddings``
and ``vqvae.check_codes`` so the rules live in one place.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vqvae.drift import CodeDrift
from vqvae.health import CodebookHealth

HealthSource = Literal["traffic", "reference"]


class EncodeRequest(BaseModel):
    """Exactly one of ``texts`` or ``embeddings``."""

    # One whole valid body (tests/service/test_openapi_examples.py): without it /docs sends both fields.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"texts": ["The capital of France is Paris."]}]})

    texts: list[str] | None = Field(
        None, min_length=1, description="Sentences to embed with the text model, then encode"
    )
    embeddings: list[list[float]] | None = Field(
        None, min_length=1, description="L2-normalised sentence embeddings, one row of input_dim floats each"
    )
    return_reconstructions: bool = Field(
        False, description="Also return decode(codes), the vectors the codes stand for"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> EncodeRequest:
        if (self.texts is None) == (self.embeddings is None):
            raise ValueError("send exactly one of 'texts' or 'embeddings'")
        return self


class ModelRef(BaseModel):
    """Which checkpoint produced the codes: codes are only comparable between equal weights."""

    name: str
    version: str
    sha256: str = Field(description="of the checkpoint file (changes when an evaluation is recorded into it)")
    weights_sha256: str = Field(description="of its weights: codes mean the same exactly when this is equal")


class EncodeResponse(BaseModel):
    codes: list[list[int]] = Field(description="One row of num_heads codes (0..codebook_size-1) per input")
    model: ModelRef
    reconstructions: list[list[float]] | None = None


# One byte per code: no codebook is larger than 256 (ModelConfig caps it), so 0..255 is a
# safe bound to check while parsing; the checkpoint's own size is checked by check_codes.
Code = Annotated[int, Field(ge=0, le=255)]


class DecodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"codes": [[17, 201, 4, 96]]}]})

    codes: list[list[Code]] = Field(min_length=1, description="Rows of num_heads codes, each 0..codebook_size-1")


class DecodeResponse(BaseModel):
    embeddings: list[list[float]]
    model: ModelRef


class Limits(BaseModel):
    """The server's input limits, so clients can split their batches to fit."""

    max_batch: int
    max_body_bytes: int
    max_text_chars: int


class ModelCard(BaseModel):
    """What a user needs to judge and reproduce the model behind this server."""

    name: str
    version: str
    architecture: str
    sha256: str
    weights_sha256: str
    checkpoint: str = Field(description="The checkpoint's file name (where it lies on the server is not shown; "
                            "sha256 identifies the file)")
    format_version: int | None
    config: dict[str, Any]
    bytes_per_vector: int
    encoding: dict[str, Any] = Field(
        description="How /encode picks codes: candidates ≤ 1 nearest codes, else decoder-aware refinement")
    provenance: dict[str, Any]
    training: dict[str, Any]
    metrics: dict[str, Any] = Field(
        description="The quality training recorded. Its top-level numbers (recall_10@10, cosine, …) are measured "
        "on the validation split (metrics_split; provenance.val_files) when training ended; eval_report, where "
        "recorded, holds the rows of `monolith-train eval` on test data (test_recall, README's Quality table)")
    metrics_split: Literal["validation"] = Field(
        "validation", description="The split the top-level numbers of metrics are measured on")
    test_recall: dict[str, float] = Field(
        default_factory=dict, description="recall 10@10 of this checkpoint's own encoding on each test set of "
        "metrics.eval_report (held-out test splits and text the model never saw: the numbers of README's Quality "
        "table), by set; empty when no report is recorded")
    has_reference_counts: bool
    text_model: str | None = Field(
        description="The text model folder's name, or None when texts are not accepted")
    service_version: str
    limits: Limits


class CodebookHealthResponse(CodebookHealth):
    """``vqvae.health.CodebookHealth`` plus where its counts came from and, for traffic, whether
    it drifted from what the checkpoint was made for (``vqvae.drift``)."""

    source: HealthSource | Literal["collection"] = Field(
        description="traffic: codes this server assigned; reference: the checkpoint's evaluation set; collection: "
        "the codes of one collection's items")
    drift: CodeDrift | None = Field(
        None, description="For source=traffic: its drift from the checkpoint's reference (reconstruction cosine, "
                          "code usage); None for source=reference, or where the checkpoint stores neither reference "
                          "counts nor an evaluation cosine")


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    model: ModelRef
    text_model: bool


class ErrorResponse(BaseModel):
    """Every error: a message (or FastAPI's list of validation errors) that says what to fix."""

    detail: str | list[dict[str, Any]]
