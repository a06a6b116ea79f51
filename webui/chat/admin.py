from pathlib import Path
from typing import Any

from django import forms
from django.contrib import admin

from webui.chat.model_library import models_dir
from webui.chat.models import Backend, LanguageModel
from webui.library.ollama_servers import ServerError, check_address


class LanguageModelForm(forms.ModelForm):
    """The checks the Models page makes, for what an admin edits here: a GGUF inside the
    models folder, an Ollama address that is not link-local or metadata."""

    class Meta:
        model = LanguageModel
        fields = [
            "name",
            "backend",
            "target",
            "pool",
            "settings",
            "parameters",
            "system_prompt",
            "enabled",
            "details",
            "groups",
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        backend, target = data.get("backend"), data.get("target") or ""
        # Only what changes is checked: a row registered otherwise (a bench's own file)
        # keeps its load settings editable.
        moved = not self.instance.pk or {"backend", "target"} & set(self.changed_data)
        if backend == Backend.LLAMA_CPP and target and moved:
            root = models_dir()
            path = Path(target).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                self.add_error("target", f"Choose a GGUF file inside the models folder ({root}).")
        settings = data.get("settings")
        host = settings.get("host") if isinstance(settings, dict) else None
        before = self.instance.settings if self.instance.pk else {}
        was = before.get("host") if isinstance(before, dict) else None
        if backend == Backend.OLLAMA and host and (host != was or moved):
            try:
                check_address(str(host))
            except ServerError as exc:
                self.add_error("settings", f"host: {exc}")
        return data


@admin.register(LanguageModel)
class LanguageModelAdmin(admin.ModelAdmin):
    form = LanguageModelForm
    list_display = ["name", "backend", "target", "pool", "enabled"]
    list_filter = ["backend", "pool", "enabled"]
    search_fields = ["name", "target"]
    change_list_template = "admin/chat/languagemodel/change_list.html"


# Conversations are not in Django's admin: they are their owner's alone (another person,
# admins included, gets 404 everywhere), and the admin would show and edit every one.
