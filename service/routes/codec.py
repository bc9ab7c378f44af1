"""POST /encode, POST /decode (JSON or .npy) and GET /model.

The body is read by hand rather than declared as a FastAPI body parameter because one route
takes two media types: JSON (validated by the pydantic models in ``service.schemas``) and
``application/x-npy`` (validated by ``service.npy``). OpenAPI still documents both.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, ValidationError

from service.batcher import MicroBatcher, check_texts
from service.deps import get_settings, ready_batcher
from service.errors import validation_error
from service.npy import NPY_MEDIA_TYPE, TooManyRows, dump_npy, is_npy, load_npy
from service.schemas import DecodeRequest, DecodeResponse, EncodeRequest, EncodeResponse, ErrorResponse, ModelCard
from service.settings import Settings
from vqvae.api import check_codes, check_embeddings

router = APIRouter(tags=["codec"])
M = TypeVar("M", bound=BaseModel)

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


def _parse(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _unprocessable(exc: ValueError) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc))


def _check_count(n: int, settings: Settings) -> None:
    if n > settings.max_batch:
        raise TooManyRows(n, settings.max_batch)


def _check_row_lengths(rows: list[list[Any]], width: int, field: str, what: str) -> None:
    """Ragged JSON rows get a message naming the row, before numpy turns them into objects."""
    for i, row in enumerate(rows):
        if len(row) != width:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=f"{field}[{i}] has {len(row)} values; every row needs {width} ({what})",
            )


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
async def encode(
    request: Request,
    batcher: MicroBatcher = Depends(ready_batcher),
    settings: Settings = Depends(get_settings),
) -> Response:
    cfg = batcher.monolith.config
    body = await request.body()
    if is_npy(request.headers.get("content-type")):
        x = load_npy(body, kind="float", max_rows=settings.max_batch)
        try:
            x = check_embeddings(x, cfg.input_dim)
        except ValueError as exc:
            raise _unprocessable(exc) from None
        if len(x) == 0:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="the .npy array has no rows")
        codes = await batcher.encode(x, bulk=True)
        return Response(dump_npy(codes), media_type=NPY_MEDIA_TYPE)

    req = _parse(EncodeRequest, body)
    if req.texts is not None:
        _check_count(len(req.texts), settings)
        batcher.require_text_model()
        try:
            texts = check_texts(req.texts, settings.max_text_chars)
        except ValueError as exc:
            raise _unprocessable(exc) from None
        x = await batcher.embed(texts)
    else:
        assert req.embeddings is not None
        _check_count(len(req.embeddings), settings)
        _check_row_lengths(req.embeddings, cfg.input_dim, "embeddings", "the model's input dimension")
        try:
            x = check_embeddings(req.embeddings, cfg.input_dim)
        except ValueError as exc:
            raise _unprocessable(exc) from None
    codes = await batcher.encode(x)
    recon = (await batcher.decode(codes)).tolist() if req.return_reconstructions else None
    return _json_response(
        EncodeResponse.model_construct(codes=codes.tolist(), model=request.app.state.model_ref,
                                       reconstructions=recon)
    )


@router.post(
    "/decode",
    response_model=DecodeResponse,
    responses={**ERRORS, 200: {"content": {NPY_MEDIA_TYPE: {}}, "description": "float32 .npy for .npy in"}},
    openapi_extra=_body_doc(DecodeRequest, "integer (uint8) .npy array [N, 4]"),
    summary="Decode codes back to approximate embeddings",
)
async def decode(
    request: Request,
    batcher: MicroBatcher = Depends(ready_batcher),
    settings: Settings = Depends(get_settings),
) -> Response:
    cfg = batcher.monolith.config
    body = await request.body()
    if is_npy(request.headers.get("content-type")):
        arr = load_npy(body, kind="int", max_rows=settings.max_batch)
        codes = _checked_codes(arr, cfg.num_heads, cfg.codebook_size)
        out = await batcher.decode(codes, bulk=True)
        return Response(dump_npy(out.astype(np.float32, copy=False)), media_type=NPY_MEDIA_TYPE)

    req = _parse(DecodeRequest, body)
    _check_count(len(req.codes), settings)
    _check_row_lengths(req.codes, cfg.num_heads, "codes", "one code per head")
    codes = _checked_codes(req.codes, cfg.num_heads, cfg.codebook_size)
    out = await batcher.decode(codes)
    return _json_response(DecodeResponse.model_construct(embeddings=out.tolist(), model=request.app.state.model_ref))


def _checked_codes(raw: Any, heads: int, size: int) -> np.ndarray:
    try:
        codes = check_codes(raw, heads, size)
    except (ValueError, OverflowError) as exc:
        raise _unprocessable(exc if isinstance(exc, ValueError) else ValueError(str(exc))) from None
    if len(codes) == 0:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="no codes to decode: send at least one row")
    return codes


@router.get("/model", response_model=ModelCard, responses={401: ERRORS[401], 503: ERRORS[503]},
            summary="The model card")
async def model(request: Request, batcher: MicroBatcher = Depends(ready_batcher)) -> ModelCard:
    return request.app.state.model_card
