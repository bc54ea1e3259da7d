"""The io.sorcha.peerd varlink interface: its IDL, and its methods over a ControlBackend.

The IDL text is what ``org.varlink.service.GetInterfaceDescription`` returns;
generic varlink clients (``varlinkctl``, python ``varlink``) parse it to learn
the methods, so it must stay in step with :class:`ControlService` (a test
checks every method of one is in the other).

Adding a method means: its line in the IDL, one handler, one entry in the
table (and in READ_ONLY_METHODS if the status socket may answer it).
"""

from __future__ import annotations

import logging
import pwd
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import attrs
import trio

from sorcha_peerd import __version__
from sorcha_peerd.control.backend import ConfigInvalid, ControlBackend, NotSupported, SyncFailed
from sorcha_peerd.control.protocol import (
    CONFIG_INVALID,
    INTERFACE,
    INTERFACE_NOT_FOUND,
    INTERNAL_ERROR,
    INVALID_ARGUMENT,
    METHOD_NOT_FOUND,
    NOT_FOUND,
    NOT_SUPPORTED,
    PERMISSION_DENIED,
    SERVICE_INTERFACE,
    STORE_UNAVAILABLE,
    SYNC_FAILED,
    ControlError,
    Params,
    Request,
)
from sorcha_peerd.register import Entry, ValidationError
from sorcha_peerd.store.base import NotFound, StoreError

log = logging.getLogger(__name__)

#: ListBlueprints page size when the caller gives none, and the most it may ask for.
DEFAULT_PAGE: Final = 1000
MAX_PAGE: Final = 10_000

IDL: Final = """\
# The control interface of sorcha-peerd, a hub or peer of the Sorcha network:
# the node's status, the system register's blueprints, and (on a hub only)
# publishing and deprecating blueprints.
interface io.sorcha.peerd

# One blueprint at its newest version.
type Blueprint (
  id: string,
  version: int,
  is_active: bool,
  # sha256: and the hex SHA-256 of the document bytes
  checksum: string,
  # Unix time in milliseconds
  published_at: int,
  published_by: string,
  publication_transaction_id: string,
  metadata: [string]string
)

# The node's state. Always has role, node_id, status, version and
# blueprints; the other members depend on the role.
method Status() -> (status: object)

# Blueprints in version order, after_version excluded, at most limit of them
# (default 1000, at most 10000). Deprecated ones only when all is true.
# Page by passing next_after_version back until fewer than limit come.
method ListBlueprints(all: ?bool, after_version: ?int, limit: ?int) -> (
  blueprints: []Blueprint,
  next_after_version: int
)

# One blueprint and its document, as UTF-8 text.
method GetBlueprint(id: string) -> (blueprint: Blueprint, document: string)

# Publish a new blueprint or a new version of one (hub only). Publishing
# the same document and metadata again returns the stored version.
method Publish(
  id: string,
  document: string,
  publisher: ?string,
  metadata: ?[string]string
) -> (blueprint: Blueprint)

# Mark a blueprint inactive at a new version (hub only).
method Deprecate(id: string, deprecated_by: ?string) -> (blueprint: Blueprint)

# Re-read the configuration file and apply what can change while running
# (log level, hub list, timings, limits); with check, only validate. Returns
# once done: the keys applied and those that need a restart. A configuration
# that does not validate changes nothing (ConfigInvalid).
method Reload(check: ?bool) -> (applied: []string, needs_restart: []string)

# The current values of the daemon's metrics.
method Metrics() -> (metrics: object)

# Synchronise with the hub now (peer only), incrementally or in full, and
# return once done: the replica's version before and after, the hub, and
# the number of active blueprints held.
method Sync(full: ?bool) -> (result: object)

# No blueprint has this id.
error NotFound (id: string)

# An argument breaks a limit of the protocol.
error InvalidArgument (field: string, reason: string)

# This node's role cannot do this.
error NotSupported (reason: string)

# The register store failed or is unreachable.
error StoreUnavailable (reason: string)

# A sync could not be done (no hub reachable, the hub refused...).
error SyncFailed (reason: string)

# The configuration file does not validate; the daemon keeps the old one.
error ConfigInvalid (problems: []string)

# An unexpected failure; details are in the daemon's log.
error InternalError ()

# The message was not a varlink call.
error InvalidRequest (reason: string)
"""

#: The standard service interface, as the varlink specification defines it.
SERVICE_IDL: Final = """\
# The Varlink Service Interface is provided by every varlink service. It
# describes the service and the interfaces it implements.
interface org.varlink.service

# Get a list of all the interfaces a service provides and information
# about the implementation.
method GetInfo() -> (
  vendor: string,
  product: string,
  version: string,
  url: string,
  interfaces: []string
)

# Get the description of an interface that is implemented by this service.
method GetInterfaceDescription(interface: string) -> (description: string)

# The requested interface was not found.
error InterfaceNotFound (interface: string)

# The requested method was not found
error MethodNotFound (method: string)

# The interface defines the requested method, but the service does not
# implement it.
error MethodNotImplemented (method: string)

# One of the passed parameters is invalid.
error InvalidParameter (parameter: string)

# Permission is denied.
error PermissionDenied ()
"""

DESCRIPTIONS: Final[Mapping[str, str]] = {SERVICE_INTERFACE: SERVICE_IDL, INTERFACE: IDL}


@attrs.frozen
class ServiceInfo:
    """What GetInfo says about this service."""

    vendor: str = "Sorcha"
    product: str = "sorcha-peerd"
    version: str = __version__
    url: str = ""


@attrs.frozen
class Caller:
    """Who is calling, from the socket's peer credentials (None when unknown).

    Its user name is the default ``publisher`` and ``deprecated_by``, so an
    operator who names nobody is still on record.
    """

    uid: int | None = None

    async def name(self) -> str:
        if self.uid is None:
            return "control-socket"
        uid = self.uid
        # Looking a user up may ask NSS (LDAP...): keep it off the event loop.
        return await trio.to_thread.run_sync(_user_name, uid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid-{uid}"


def blueprint_json(entry: Entry) -> dict[str, Any]:
    """An entry as the IDL's ``Blueprint`` (the document travels separately)."""
    return {
        "id": entry.blueprint_id,
        "version": entry.version,
        "is_active": entry.is_active,
        "checksum": entry.checksum,
        "published_at": entry.published_at,
        "published_by": entry.published_by,
        "publication_transaction_id": entry.publication_transaction_id,
        "metadata": dict(entry.metadata),
    }


Handler = Callable[[Params, Caller], Awaitable[dict[str, Any]]]

#: What the group-accessible status socket answers; everything else is PermissionDenied.
READ_ONLY_METHODS: Final = frozenset(
    {
        f"{SERVICE_INTERFACE}.GetInfo",
        f"{SERVICE_INTERFACE}.GetInterfaceDescription",
        f"{INTERFACE}.Status",
        f"{INTERFACE}.ListBlueprints",
        f"{INTERFACE}.GetBlueprint",
        f"{INTERFACE}.Metrics",
    }
)


class ControlService:
    """Answers one call: checks parameters, asks the backend, maps its errors.

    Holds no per-connection state, so one instance serves every connection.
    """

    def __init__(
        self, backend: ControlBackend, info: ServiceInfo | None = None, *, read_only: bool = False
    ) -> None:
        self._backend = backend
        self._info = info or ServiceInfo()
        self.read_only = read_only
        self._methods: dict[str, Handler] = {
            f"{SERVICE_INTERFACE}.GetInfo": self._get_info,
            f"{SERVICE_INTERFACE}.GetInterfaceDescription": self._get_description,
            f"{INTERFACE}.Status": self._status,
            f"{INTERFACE}.ListBlueprints": self._list,
            f"{INTERFACE}.GetBlueprint": self._get,
            f"{INTERFACE}.Publish": self._publish,
            f"{INTERFACE}.Deprecate": self._deprecate,
            f"{INTERFACE}.Sync": self._sync,
            f"{INTERFACE}.Reload": self._reload,
            f"{INTERFACE}.Metrics": self._metrics,
        }

    @property
    def methods(self) -> frozenset[str]:
        return frozenset(self._methods)

    async def call(self, request: Request, caller: Caller) -> dict[str, Any]:
        """The reply parameters of ``request``; raises :class:`ControlError` for an error reply."""
        handler = self._methods.get(request.method)
        if handler is not None and self.read_only and request.method not in READ_ONLY_METHODS:
            raise ControlError(PERMISSION_DENIED)
        if handler is None:
            if request.interface not in DESCRIPTIONS:
                raise ControlError(INTERFACE_NOT_FOUND, {"interface": request.interface})
            raise ControlError(METHOD_NOT_FOUND, {"method": request.method})
        try:
            return await handler(Params(request.parameters), caller)
        except ControlError:
            raise
        except ValidationError as exc:
            raise ControlError(
                INVALID_ARGUMENT, {"field": exc.field, "reason": exc.problem}
            ) from exc
        except NotFound as exc:
            raise ControlError(NOT_FOUND, {"id": exc.blueprint_id}) from exc
        except NotSupported as exc:
            raise ControlError(NOT_SUPPORTED, {"reason": exc.reason}) from exc
        except SyncFailed as exc:
            raise ControlError(SYNC_FAILED, {"reason": exc.reason}) from exc
        except ConfigInvalid as exc:
            raise ControlError(CONFIG_INVALID, {"problems": exc.problems}) from exc
        except StoreError as exc:
            raise ControlError(STORE_UNAVAILABLE, {"reason": str(exc)}) from exc
        except Exception as exc:
            log.exception("control: %s failed", request.method)
            raise ControlError(INTERNAL_ERROR) from exc

    # -- org.varlink.service

    async def _get_info(self, p: Params, caller: Caller) -> dict[str, Any]:
        p.finish()
        return {
            "vendor": self._info.vendor,
            "product": self._info.product,
            "version": self._info.version,
            "url": self._info.url,
            "interfaces": list(DESCRIPTIONS),
        }

    async def _get_description(self, p: Params, caller: Caller) -> dict[str, Any]:
        name = p.string("interface")
        p.finish()
        description = DESCRIPTIONS.get(name)
        if description is None:
            raise ControlError(INTERFACE_NOT_FOUND, {"interface": name})
        return {"description": description}

    # -- io.sorcha.peerd

    async def _status(self, p: Params, caller: Caller) -> dict[str, Any]:
        p.finish()
        return {"status": dict(await self._backend.status())}

    async def _list(self, p: Params, caller: Caller) -> dict[str, Any]:
        include_inactive = p.optional_bool("all", False)
        after = p.optional_int("after_version", 0)
        limit = p.optional_int("limit", DEFAULT_PAGE)
        p.finish()
        if after < 0:
            raise ValidationError("after_version", f"must not be negative, got {after}")
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationError("limit", f"must be between 1 and {MAX_PAGE}, got {limit}")
        entries = await self._backend.list_blueprints(
            include_inactive=include_inactive, after_version=after, limit=limit
        )
        return {
            "blueprints": [blueprint_json(e) for e in entries],
            "next_after_version": entries[-1].version if entries else after,
        }

    async def _get(self, p: Params, caller: Caller) -> dict[str, Any]:
        blueprint_id = p.string("id")
        p.finish()
        entry = await self._backend.get_blueprint(blueprint_id)
        if entry is None:
            raise NotFound(blueprint_id)
        # Published documents are checked to be UTF-8 JSON; a failure here is a bug.
        return {"blueprint": blueprint_json(entry), "document": entry.document.decode("utf-8")}

    async def _publish(self, p: Params, caller: Caller) -> dict[str, Any]:
        blueprint_id = p.string("id")
        document = p.string("document")
        publisher = p.optional_string("publisher")
        metadata = p.optional_string_map("metadata")
        p.finish()
        if publisher is None:
            publisher = await caller.name()
        try:
            data = document.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, as JSON's "\ud800" can carry
            raise ValidationError("blueprint_document", "is not valid Unicode text") from None
        entry = await self._backend.publish(
            blueprint_id, data, publisher=publisher, metadata=metadata
        )
        log.info(
            "control: %r published %s at version %d", publisher, entry.blueprint_id, entry.version
        )
        return {"blueprint": blueprint_json(entry)}

    async def _deprecate(self, p: Params, caller: Caller) -> dict[str, Any]:
        blueprint_id = p.string("id")
        by = p.optional_string("deprecated_by")
        p.finish()
        if by is None:
            by = await caller.name()
        entry = await self._backend.deprecate(blueprint_id, deprecated_by=by)
        log.info("control: %r deprecated %s at version %d", by, entry.blueprint_id, entry.version)
        return {"blueprint": blueprint_json(entry)}

    async def _sync(self, p: Params, caller: Caller) -> dict[str, Any]:
        full = p.optional_bool("full", False)
        p.finish()
        log.info("control: a %s sync was asked for", "full" if full else "incremental")
        return {"result": dict(await self._backend.sync(full=full))}

    async def _reload(self, p: Params, caller: Caller) -> dict[str, Any]:
        check = p.optional_bool("check", False)
        p.finish()
        log.info(
            "control: %s asked for by %s",
            "a config check" if check else "a reload",
            await caller.name(),
        )
        result = await self._backend.reload(check=check)
        return {
            "applied": list(result.get("applied", [])),
            "needs_restart": list(result.get("needs_restart", [])),
        }

    async def _metrics(self, p: Params, caller: Caller) -> dict[str, Any]:
        p.finish()
        return {"metrics": dict(await self._backend.metrics())}
