"""Request dependencies: the services, the merged parameters and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from sdserver.api.params import RequestParams, find_api_key, read_params
from sdserver.api.services import Services
from sdserver.auth import ApiKey
from sdserver.errors import ForbiddenError


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_caller(request: Request) -> ApiKey:
    params = await read_params(request)
    services = get_services(request)
    return await run_in_threadpool(services.keys.verify, find_api_key(request, params))


async def get_admin(caller: Annotated[ApiKey, Depends(get_caller)]) -> ApiKey:
    if not caller.is_admin:
        raise ForbiddenError()
    return caller


ServicesDep = Annotated[Services, Depends(get_services)]
ParamsDep = Annotated[RequestParams, Depends(read_params)]
CallerDep = Annotated[ApiKey, Depends(get_caller)]
AdminDep = Annotated[ApiKey, Depends(get_admin)]
