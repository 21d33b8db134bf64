"""Server reflection that also answers for method names (what ghz asks for).

grpcio-reflection (v1alpha, the only version it ships) answers ``file_containing_symbol``
with ``DescriptorPool.FindFileContainingSymbol``. With protobuf's default ``upb``
backend that call finds messages, enums and services but not methods:
``FindFileContainingSymbol("personalization.v1.Recommender.Recommend")`` raises
KeyError. grpcurl resolves the *service* first and reads the method from it, so it
worked; ghz (jhump/protoreflect) asks for the *method* symbol and got NOT_FOUND
("Symbol not found: personalization.v1.Recommender.Recommend").

:class:`MethodAwarePool` is the default pool with one fallback: a name that is not a
symbol of its own but ``<service>.<method>`` of a known service resolves to that
service's file, as the reflection protocol says it should.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor

__all__ = ["MethodAwarePool"]


class MethodAwarePool:
    """A descriptor pool whose ``FindFileContainingSymbol`` also resolves method names;
    every other call goes to the wrapped pool (default: ``descriptor_pool.Default()``)."""

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool if pool is not None else descriptor_pool.Default()

    def FindFileContainingSymbol(self, full_name: str) -> FileDescriptor:
        try:
            return self._pool.FindFileContainingSymbol(full_name)
        except KeyError:
            service_name, _, method = full_name.rpartition(".")
            if service_name:
                try:
                    service = self._pool.FindServiceByName(service_name)
                except KeyError:
                    pass
                else:
                    if method in service.methods_by_name:
                        return service.file
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)
