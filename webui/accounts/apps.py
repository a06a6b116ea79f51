from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "webui.accounts"
    label = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_in, user_logged_out
        from django.db.models.signals import post_save

        from webui.accounts import signals

        post_save.connect(signals.make_profile, sender=get_user_model(), dispatch_uid="profile")
        user_logged_in.connect(signals.remember_session, dispatch_uid="remember_session")
        user_logged_out.connect(signals.forget_session, dispatch_uid="forget_session")
