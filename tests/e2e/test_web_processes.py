"""Several uvicorn processes behind one port (CORRAL_WEB_PROCESSES): a conversation's
sockets may sit in different processes, and each must see the whole stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import _stop, start_web_server
from tests.e2e.helpers import ChatClient
from webui.chat.models import Conversation, Message

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _serving_children(pid: int) -> list[int]:
    """uvicorn's worker processes (multiprocessing's resource tracker left out)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _server_process_of(client_ports: list[int], server_port: int, pids: list[int]) -> dict:
    """Which uvicorn process holds the server end of each client's connection."""
    by_inode = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    holder = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) != server_port:
            continue
        remote_port = int(remote.split(":")[1], 16)
        if remote_port in client_ports and inode in by_inode:
            holder[remote_port] = by_inode[inode]
    return holder


def test_sockets_in_different_web_processes_each_get_the_whole_answer(
    alice, gemma, worker, stack_env, tmp_path
):
    server = start_web_server(stack_env, tmp_path / "web.log", web_processes=2)
    clients: list[ChatClient] = []
    try:
        processes = _serving_children(server.process.pid)
        assert len(processes) == 2, "uvicorn did not start two processes"
        conversation = Conversation.objects.create(owner=alice, model=gemma)
        # Connections go to whichever process accepts first: open sockets until both
        # processes hold some (a handful is almost always enough).
        held: dict = {}
        while len(set(held.values())) < 2 and len(clients) < 40:
            client = ChatClient.open(server.url, conversation.pk, alice)
            clients.append(client)
            ports = [c.connection.socket.getsockname()[1] for c in clients]
            held = _server_process_of(ports, server.port, processes)
        assert len(set(held.values())) == 2, f"every socket went to one process: {held}"

        clients[0].send({"type": "send", "text": "Say hello.", "model": gemma.pk})
        answer_id = None
        for client in clients:
            client.wait_until(
                lambda c: any(
                    m["role"] == "assistant" and m["status"] not in ("queued", "running")
                    for m in c.messages.values()
                ),
                timeout=120,
            )
            answer_id = client.answer()["id"]
        saved = Message.objects.get(pk=answer_id)
        assert saved.status == Message.Status.DONE, saved.error
        for client in clients:
            assert client.gaps == 0, client.gap_log
            streamed = "".join(d["text"] for d in client.deltas if d["message"] == saved.pk)
            assert streamed == saved.content == client.messages[saved.pk]["content"]
    finally:
        for client in clients:
            client.close()
        _stop(server.process)
