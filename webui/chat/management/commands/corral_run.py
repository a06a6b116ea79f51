"""Run everything `make run` needs: Redis (embedded unless REDIS_URL), a worker, the web."""

from __future__ import annotations

import time

import redis
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from webui import config
from webui.accounts import services as account_services
from webui.chat import wakeups
from webui.run import processes

# How long the ready message waits for the worker to say it is up (its model loads later,
# on the first answer): past this it is printed all the same.
WORKER_READY_TIMEOUT_S = 60.0


def framed(lines: list[str]) -> str:
    """``lines`` between two rules, so they stand out from whatever was printed before."""
    rule = "=" * max(len(line) for line in lines)
    return "\n".join(["", rule, *lines, rule, ""])


def wait_for_workers(supervisor: processes.Supervisor, pools: list[str]) -> None:
    """Until a worker of every pool noted itself alive, a child exited, or the timeout."""
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    while time.monotonic() < deadline and supervisor.first_exit() is None:
        try:
            if all(wakeups.live_workers(pool) for pool in pools):
                return
        except redis.RedisError:  # not up yet: asked again in a moment, quietly
            pass
        time.sleep(0.2)


class Command(BaseCommand):
    help = "Migrate, prepare the default model, and serve Corral with one worker."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--verbose",
            action="store_true",
            help="show every process's own start-up output (as LOG_LEVEL=INFO does)",
        )

    def handle(self, *args, **options) -> None:
        processes.install_stop_handlers()
        quiet = not options["verbose"] and config.LOG_LEVEL not in ("INFO", "DEBUG")
        supervisor = processes.Supervisor()
        if quiet:
            supervisor.env["PYTHONWARNINGS"] = processes.QUIET_WARNINGS
        try:
            self.stdout.write(
                "Starting Corral (Redis, an answer worker, a model-jobs worker, the web server)…"
            )
            if not config.REDIS_URL:
                socket_path = config.EMBEDDED_REDIS_SOCKET
                socket_path.unlink(missing_ok=True)
                argv = processes.redis_server_argv(socket_path, config.DATA_DIR, quiet=quiet)
                supervisor.start("redis", argv)
                processes.wait_for_unix_socket(socket_path)
                supervisor.env["REDIS_URL"] = config.redis_url()
            call_command("migrate", interactive=False, verbosity=0)
            call_command("corral_prepare")
            supervisor.start(
                "worker",
                processes.worker_argv(config.WORKER_QUEUES, config.WORKER_CONCURRENCY, quiet=quiet),
            )
            # Model jobs (quantize, convert, pulls) in a process of their own: a long one
            # never holds up answers.
            supervisor.start(
                "model-jobs",
                processes.worker_argv([config.MODEL_JOB_QUEUE], 1, quiet=quiet),
            )
            web = supervisor.start(
                "web",
                processes.web_argv(config.HOST, config.PORT, quiet, config.WEB_PROCESSES),
            )
            processes.wait_for_port(config.HOST, config.PORT, alive={"web": web.process})
            wait_for_workers(supervisor, config.WORKER_QUEUES)
            base_url = f"http://{config.HOST}:{config.PORT}"
            lines = [f"Corral is serving on {base_url}/"]
            if account_services.needs_setup():
                token = account_services.make_setup_token()
                lines += [
                    "No users yet. Open this one-time link to create the first admin:",
                    f"  {base_url}/setup/{token}/",
                ]
            lines.append("Ctrl-C stops everything.")
            self.stdout.write(self.style.SUCCESS(framed(lines)))
            while (gone := supervisor.first_exit()) is None:
                time.sleep(0.5)
            self.stderr.write(f"{gone.name} exited with {gone.process.returncode}; stopping.")
        except KeyboardInterrupt:
            self.stdout.write("Stopping…")
        finally:
            supervisor.stop()
