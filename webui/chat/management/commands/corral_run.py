"""Run everything `make run` needs: Redis (embedded unless REDIS_URL), a worker, the web."""

from __future__ import annotations

import time

from django.core.management import call_command
from django.core.management.base import BaseCommand

from webui import config
from webui.accounts import services as account_services
from webui.run import processes


class Command(BaseCommand):
    help = "Migrate, prepare the default model, and serve Corral with one worker."

    def handle(self, *args, **options) -> None:
        processes.install_stop_handlers()
        supervisor = processes.Supervisor()
        try:
            if not config.REDIS_URL:
                socket_path = config.EMBEDDED_REDIS_SOCKET
                socket_path.unlink(missing_ok=True)
                supervisor.start("redis", processes.redis_server_argv(socket_path, config.DATA_DIR))
                processes.wait_for_unix_socket(socket_path)
                supervisor.env["REDIS_URL"] = config.redis_url()
            call_command("migrate", interactive=False, verbosity=0)
            call_command("corral_prepare")
            supervisor.start(
                "worker", processes.worker_argv(config.WORKER_QUEUES, config.WORKER_CONCURRENCY)
            )
            web = supervisor.start("web", processes.web_argv(config.HOST, config.PORT))
            processes.wait_for_port(config.HOST, config.PORT, alive={"web": web.process})
            base_url = f"http://{config.HOST}:{config.PORT}"
            self.stdout.write(self.style.SUCCESS(f"Corral is serving on {base_url}/"))
            if account_services.needs_setup():
                token = account_services.make_setup_token()
                self.stdout.write(
                    "No users yet. Open this one-time link to create the first admin:\n"
                    f"  {base_url}/setup/{token}/"
                )
            while (gone := supervisor.first_exit()) is None:
                time.sleep(0.5)
            self.stderr.write(f"{gone.name} exited with {gone.process.returncode}; stopping.")
        except KeyboardInterrupt:
            self.stdout.write("Stopping…")
        finally:
            supervisor.stop()
