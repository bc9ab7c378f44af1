"""POST /encode, POST /decode (JSON or .npy) and GET /model.

The body is read by hand rather than declared as a FastAPI body parameter because one route
takes two media types: JSON (validated by the pydantic models in ``service.schemas``) and
``application/x-npy`` (validated by ``service.npy``). OpenAPI still documents both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from service import validation
from service.batcher import MicroBatcher
from service.deps import AppSettings, Batcher, State
from service.errors import InvalidInput
from service.npy import NPY_MEDIA_TYPE, dump_npy, is_npy, load_npy
from service.schemas import DecodeRequest, DecodeResponse, EncodeRequest, EncodeResponse, ErrorResponse, ModelCard
from service.settings import Settings

router = APIRouter(tags=["codec"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "Missing or wrong API key",
        413: "Body or batch too large",
        422: "Invalid input; the detail says what to fix",
        503: "Model not loaded yet, or overloaded (see Retry-After)",
    }.items()
}


def _body_doc(model: type[BaseModel], npy: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": model.model_json_schema()},
                NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary", "description": npy}},
            },
        }
    }


def _json_response(model: BaseModel) -> Response:
    # Built with model_construct from arrays we made: serialise straight away, no re-validation.
    return Response(model.model_dump_json(exclude_none=True), media_type="application/json")


@router.post(
    "/encode",
    response_model=EncodeResponse,
    response_model_exclude_none=True,
    responses={**ERRORS, 200: {"content": {NPY_MEDIA_TYPE: {}}, "description": "codes (uint8 .npy for .npy in)"}},
    openapi_extra=_body_doc(EncodeRequest, "float32 .npy array [N, 384]"),
    summary="Encode texts or embeddings to codes",
)
async def encode(request: Request, batcher: Batcher, settings: AppSettings, state: State) -> Response:
    body = await request.body()
    if is_npy(request.headers.get("content-type")):
        x = _npy_embeddings(body, batcher.monolith.config.input_dim, settings)
        return Response(dump_npy(await batcher.encode(x, bulk=True)), media_type=NPY_MEDIA_TYPE)
    req = validation.parse(EncodeRequest, body)
    x = await _json_embeddings(req, batcher, settings)
    codes = await batcher.encode(x)
    recon = (await batcher.decode(codes)).tolist() if req.return_reconstructions else None
    return _json_response(
        EncodeResponse.model_construct(codes=codes.tolist(), model=state.model_ref, reconstructions=recon)
    )


def _npy_embeddings(body: bytes, dim: int, settings: Settings) -> np.ndarray:
    x = validation.embeddings(load_npy(body, kind="float", max_rows=settings.max_batch), dim)
    if len(x) == 0:
        raise InvalidInput("the .npy array has no rows")
    return validation.nonzero_embeddings(x, "row {i} of the .npy array")


async def _json_embeddings(req: EncodeRequest, batcher: MicroBatcher, settings: Settings) -> np.ndarray:
    """The request's embeddings, or its texts through the text model."""
    if req.texts is not None:
        validation.batch_size(len(req.texts), settings.max_batch)
        batcher.require_text_model()
        return await batcher.embed(validation.texts(req.texts, settings.max_text_chars))
    assert req.embeddings is not None
    dim = batcher.monolith.config.input_dim
    validation.batch_size(len(req.embeddings), settings.max_batch)
    validation.row_lengths(req.embeddings, dim, "embeddings", "the model's input dimension")
    return validation.nonzero_embeddings(validation.embeddings(req.embeddings, dim))


@router.post(
    "/decode",
    response_model=DecodeResponse,
    responses={**ERRORS, 200: {"content": {NPY_MEDIA_TYPE: {}}, "description": "float32 .npy for .npy in"}},
    openapi_extra=_body_doc(DecodeRequest, "integer (uint8) .npy array [N, 4]"),
    summary="Decode codes back to approximate embeddings",
)
async def decode(request: Request, batcher: Batcher, settings: AppSettings, state: State) -> Response:
    cfg = batcher.monolith.config
    body = await request.body()
    if is_npy(request.headers.get("content-type")):
        codes = _checked_codes(load_npy(body, kind="int", max_rows=settings.max_batch), cfg.num_heads,
                               cfg.codebook_size)
        out = await batcher.decode(codes, bulk=True)
        return Response(dump_npy(out.astype(np.float32, copy=False)), media_type=NPY_MEDIA_TYPE)
    req = validation.parse(DecodeRequest, body)
    validation.batch_size(len(req.codes), settings.max_batch)
    validation.row_lengths(req.codes, cfg.num_heads, "codes", "one code per head")
    out = await batcher.decode(_checked_codes(req.codes, cfg.num_heads, cfg.codebook_size))
    return _json_response(DecodeResponse.model_construct(embeddings=out.tolist(), model=state.model_ref))


def _checked_codes(raw: Any, heads: int, size: int) -> np.ndarray:
    codes = validation.codes(raw, heads, size)
    if len(codes) == 0:
        raise InvalidInput("no codes to decode: send at least one row")
    return codes


@router.get("/model", response_model=ModelCard, responses={401: ERRORS[401], 503: ERRORS[503]},
            summary="The model card")
async def model(state: State, _: Batcher) -> ModelCard:
    return state.model_card
