from django.core.management.base import BaseCommand

from webui.chat import model_library, services


class Command(BaseCommand):
    help = "Assemble the default Gemma GGUF into MODELS_DIR and register it (idempotent)."

    def handle(self, *args, **options) -> None:
        model = services.prepare_default_model()
        model_library.describe_file(model)  # once: what the model library shows of it
        self.stdout.write(f"Default model {model.name!r} ready at {model.target}")
