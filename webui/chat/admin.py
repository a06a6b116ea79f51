from django.contrib import admin

from webui.chat.models import Conversation, LanguageModel, Message


@admin.register(LanguageModel)
class LanguageModelAdmin(admin.ModelAdmin):
    list_display = ["name", "backend", "target", "pool", "enabled"]
    list_filter = ["backend", "pool", "enabled"]
    search_fields = ["name", "target"]
    change_list_template = "admin/chat/languagemodel/change_list.html"


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = ["role", "status", "content", "error", "model", "completion_tokens"]
    readonly_fields = fields


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["__str__", "owner", "model", "updated_at"]
    search_fields = ["title", "owner__username"]
    inlines = [MessageInline]
