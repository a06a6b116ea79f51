"""Ollama servers admins add: the address rules, health checks, and the jobs that pull,
show, copy and delete models on them.

An address is an http(s) URL whose host resolves only to addresses a server may have:
loopback and private networks are allowed (Ollama usually runs there), link-local and
cloud-metadata addresses are not, in any spelling (IPv4-mapped IPv6 included). The check
runs when the server is added and before every health check, so a name that later
resolves elsewhere is caught. Redirects are never followed (``inference.ollama_admin``).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import asdict
from datetime import timedelta
from urllib.parse import urlsplit

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from inference import ollama_admin
from webui.library import jobs
from webui.library.models import JobKind, ModelJob, OllamaServer

# Cloud metadata services that are not link-local (the usual 169.254.169.254 is).
_METADATA = (
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba Cloud
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS over IPv6
)


class ServerError(ValueError):
    """The server cannot be added or used; the message says why."""


def _refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return _refused(mapped)
    if ip.is_loopback:  # Ollama's usual home (::1 lies in a reserved range too)
        return False
    return (
        ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_reserved
        or any(ip in network for network in _METADATA)
    )


def check_address(base_url: str) -> str:
    """``base_url`` as Corral will call it (scheme://host[:port]); raise ServerError."""
    base_url = base_url.strip()
    try:
        parts = urlsplit(base_url)
        port = parts.port
    except ValueError:
        raise ServerError("That is not a URL.") from None
    if parts.scheme not in ("http", "https"):
        raise ServerError("The address must start with http:// or https://.")
    if not parts.hostname or parts.username or parts.password:
        raise ServerError("The address must name a host, without a user or password.")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ServerError("Give the server's address only, like http://127.0.0.1:11434.")
    host = parts.hostname
    try:
        found = socket.getaddrinfo(host, port or 0, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise ServerError(f"{host} cannot be resolved.") from None
    for *_, sockaddr in found:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if _refused(ip):
            raise ServerError(
                f"{host} resolves to {ip}: link-local, metadata and other special "
                "addresses are refused."
            )
    netloc = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{netloc}{f':{port}' if port else ''}"


def add_server(name: str, base_url: str) -> OllamaServer:
    name = name.strip()
    if not name or len(name) > 100:
        raise ServerError("Give the server a name of at most 100 characters.")
    url = check_address(base_url)
    try:
        with transaction.atomic():
            server = OllamaServer.objects.create(name=name, base_url=url)
    except IntegrityError:
        raise ServerError("A server with that name or address exists already.") from None
    check_server(server)
    return server


def check_server(server: OllamaServer) -> OllamaServer:
    """Ask the server for its version and models; it is down when either fails."""
    try:
        url = check_address(server.base_url)
    except ServerError as exc:
        health = ollama_admin.ServerHealth(ok=False, error=str(exc))
    else:
        health = ollama_admin.check_server(url)
    server.healthy = health.ok
    server.version = health.version or ""
    server.last_error = health.error or ""
    server.checked_at = timezone.now()
    if health.ok:
        server.remote_models = [
            {
                "name": model.name,
                "size": model.size,
                "family": model.family,
                "parameter_size": model.parameter_size,
                "quantization_level": model.quantization_level,
            }
            for model in health.models
        ]
    # An update, never save(): a server removed during its check must stay removed.
    OllamaServer.objects.filter(pk=server.pk).update(
        healthy=server.healthy,
        version=server.version,
        last_error=server.last_error,
        checked_at=server.checked_at,
        remote_models=server.remote_models,
    )
    return server


def check_all() -> list[OllamaServer]:
    return [check_server(server) for server in OllamaServer.objects.all()]


def has_model(server: OllamaServer, name: str) -> bool:
    wanted = _full(name)
    return any(_full(str(model.get("name", ""))) == wanted for model in server.remote_models)


def _full(name: str) -> str:
    """Ollama's reading of a name: no tag means ``:latest``."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def _name(name: str) -> str:
    try:
        return ollama_admin.validate_model_name(name.strip())
    except ollama_admin.InvalidModelName as exc:
        raise ServerError(str(exc)) from None


def start_model_job(
    user: AbstractBaseUser, server: OllamaServer, kind: str, name: str, destination: str = ""
) -> ModelJob:
    """Queue a pull, show, copy (to ``destination``) or delete of ``name`` on ``server``;
    names are checked before anything is queued."""
    name = _name(name)
    params: dict[str, object] = {"server": server.pk, "name": name}
    title = name
    if kind == JobKind.COPY:
        params["destination"] = _name(destination)
        title = f"{name} → {params['destination']}"
    return jobs.start_job(kind=kind, title=f"{title} on {server.name}", params=params, user=user)


def details_for_library(details: ollama_admin.ModelDetails) -> dict[str, object]:
    """What the Models page shows of an Ollama model (the GGUF rows' keys)."""
    facts = asdict(details)
    return {
        "architecture": facts["architecture"] or facts["family"] or "",
        "parameters": facts["parameter_count"],
        "quantization": facts["quantization"] or "",
        "context_length": facts["context_length"],
        "has_chat_template": facts["has_template"],
    }


# Servers are checked again when their last check is this old (the reaper asks).
CHECK_INTERVAL_S = 30.0


def check_due() -> list[OllamaServer]:
    """Check the servers whose last check is older than CHECK_INTERVAL_S: routing skips
    the ones that are down, and the page shows them so."""
    due = timezone.now() - timedelta(seconds=CHECK_INTERVAL_S)
    stale = OllamaServer.objects.filter(checked_at__isnull=True) | OllamaServer.objects.filter(
        checked_at__lt=due
    )
    return [check_server(server) for server in stale]
