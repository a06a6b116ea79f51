import importlib

from django.db import migrations, models

# SQLite rebuilds chat_message to add a NOT NULL column, which drops the full-text search
# triggers made by 0005: make them again (every statement there is IF NOT EXISTS).
search = importlib.import_module("webui.chat.migrations.0005_search")


class Migration(migrations.Migration):

    dependencies = [
        ('chat', '0008_model_system_prompt'),
    ]

    operations = [
        migrations.AddField(
            model_name='message',
            name='served_by',
            field=models.CharField(blank=True, max_length=500),
        ),
        migrations.RunPython(search.forward, migrations.RunPython.noop),
    ]
