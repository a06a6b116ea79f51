from django.core.management.base import BaseCommand, CommandError

from webui import config
from webui.accounts import services


class Command(BaseCommand):
    help = "Print the one-time link where the first admin sets a password."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--base-url", default=f"http://{config.HOST}:{config.PORT}")

    def handle(self, *args, base_url: str, **options) -> None:
        if not services.needs_setup():
            raise CommandError("Users exist already; use `manage.py createsuperuser`.")
        token = services.make_setup_token()
        self.stdout.write(f"{base_url.rstrip('/')}/setup/{token}/")
