from django.apps import AppConfig


class LibraryConfig(AppConfig):
    """Model management: background model jobs (quantize, convert, Ollama pulls) and
    Ollama servers."""

    name = "webui.library"
    label = "library"
    default_auto_field = "django.db.models.BigAutoField"
