"""Which Ollama server an answer goes to, for a model that names none itself: among the
servers that are up and have the model, the one with the fewest answers in flight (Open
WebUI picks at random). The choice is kept on the answer, so a worker asks once."""

from __future__ import annotations

from django.db.models import Count

from inference import BackendError
from webui.chat.models import Message
from webui.library import ollama_servers
from webui.library.models import OllamaServer

IN_FLIGHT = (Message.Status.QUEUED, Message.Status.RUNNING)


def servers_added() -> bool:
    """Whether admins added any Ollama server (else OLLAMA_HOST serves, as before)."""
    return OllamaServer.objects.exists()


def candidates(target: str) -> list[OllamaServer]:
    """Servers that are up and have ``target`` (their addresses not checked yet)."""
    servers = OllamaServer.objects.filter(healthy=True).order_by("name")
    return [server for server in servers if ollama_servers.has_model(server, target)]


def _address_ok(server: OllamaServer) -> bool:
    """Whether its address still resolves only to addresses a server may have (a name can
    be pointed elsewhere after its check). Asked of the server about to be used only: this
    runs each time a worker looks at a queued Ollama answer."""
    try:
        ollama_servers.check_address(server.base_url)
    except ollama_servers.ServerError:
        return False
    return True


def in_flight(urls: list[str]) -> dict[str, int]:
    rows = (
        Message.objects.filter(served_by__in=urls, status__in=IN_FLIGHT)
        .values("served_by")
        .annotate(n=Count("id"))
    )
    counts = {url: 0 for url in urls}
    counts.update({row["served_by"]: row["n"] for row in rows})
    return counts


def least_busy(target: str) -> str:
    """The base URL of the server to use for ``target`` now; BackendError when none can."""
    servers = candidates(target)
    counts = in_flight([server.base_url for server in servers])
    for server in sorted(servers, key=lambda server: (counts[server.base_url], server.name)):
        if _address_ok(server):
            return server.base_url
    raise BackendError(f"No Ollama server that is up has {target}.")


def route(answer: Message, target: str) -> str:
    """The server ``answer`` goes to: the one it was given, while that one is up and has
    the model; else the least busy, noted on the answer."""
    given = next((s for s in candidates(target) if s.base_url == answer.served_by), None)
    if given is not None and _address_ok(given):
        return given.base_url
    url = least_busy(target)
    Message.objects.filter(pk=answer.pk).update(served_by=url)
    answer.served_by = url
    return url
