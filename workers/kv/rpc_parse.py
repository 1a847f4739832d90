"""Parse gRPC requests in the servicer, so that bytes which are not the request message answer
INVALID_ARGUMENT naming the message type (grpc's own deserializer would answer UNKNOWN or INTERNAL
and log a traceback).

Handlers are registered with `request_deserializer=None`: they receive the raw request bytes, and
these wrappers parse them before calling the typed handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

_Req = TypeVar("_Req", bound=Message)
_Resp = TypeVar("_Resp")


async def parse_request(message: type[_Req], request: bytes, context: grpc.aio.ServicerContext) -> _Req:
    """`request` parsed as `message`; aborts the call with INVALID_ARGUMENT if it does not parse."""
    try:
        return message.FromString(request)
    except DecodeError as exc:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{message.DESCRIPTOR.full_name} does not parse ({len(request)} bytes): {exc}",
        )
        raise  # unreachable: abort raises


def parsed_unary(
    message: type[_Req], handler: Callable[[_Req, grpc.aio.ServicerContext], Awaitable[_Resp]]
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[_Resp]]:
    """A unary handler behind a parse of the raw request."""

    async def parse_then_handle(request: bytes, context: grpc.aio.ServicerContext) -> _Resp:
        return await handler(await parse_request(message, request, context), context)

    return parse_then_handle


def parsed_stream(
    message: type[_Req], handler: Callable[[_Req, grpc.aio.ServicerContext], AsyncIterator[_Resp]]
) -> Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[_Resp]]:
    """A server-streaming handler behind a parse of the raw request."""

    async def parse_then_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[_Resp]:
        parsed = await parse_request(message, request, context)
        async for response in handler(parsed, context):
            yield response

    return parse_then_stream


def parsing_generic_handler(service: ServiceDescriptor, servicer: Any) -> grpc.GenericRpcHandler:
    """A generic handler for every method of `service` (from the generated `_pb2.DESCRIPTOR`) that
    calls `servicer.<Method>` with the parsed request. Client-streaming methods are refused here
    (none of moeplane's services have one)."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        if method.client_streaming:
            raise ValueError(f"{method.full_name} is client-streaming, which this wrapper cannot parse")
        request, response = GetMessageClass(method.input_type), GetMessageClass(method.output_type)
        impl = getattr(servicer, method.name)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                parsed_stream(request, impl),
                request_deserializer=None,
                response_serializer=response.SerializeToString,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                parsed_unary(request, impl),
                request_deserializer=None,
                response_serializer=response.SerializeToString,
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
