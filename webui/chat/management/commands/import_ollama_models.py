from django.core.management.base import BaseCommand, CommandError

from inference import BackendError
from webui.chat import services


class Command(BaseCommand):
    help = "Register the models of an Ollama server (default: OLLAMA_HOST)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=None, help="Ollama base URL")

    def handle(self, *args, host: str | None = None, **options) -> None:
        try:
            created = services.import_ollama_models(host)
        except BackendError as exc:
            # An admin runs this: the detail (which server, what failed) helps.
            detail = f" ({exc.detail})" if exc.detail else ""
            raise CommandError(f"{exc}{detail}") from exc
        for model in created:
            self.stdout.write(f"Imported {model.name}")
        self.stdout.write(f"{len(created)} new model(s).")
