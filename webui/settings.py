"""Django settings. Values come from webui.config, which reads the environment."""

from __future__ import annotations

from datetime import timedelta

import dj_database_url

from webui import config

BASE_DIR = config.BASE_DIR
SECRET_KEY = config.SECRET_KEY
DEBUG = config.DEBUG
ALLOWED_HOSTS = config.ALLOWED_HOSTS
CSRF_TRUSTED_ORIGINS = config.CSRF_TRUSTED_ORIGINS

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "axes",
    "webui.accounts",
    "webui.chat",
    "webui.library",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "webui.accounts.middleware.ApprovalRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "webui.middleware.ContentSecurityPolicyMiddleware",
    # Last, as django-axes asks: turns a locked-out sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "webui.urls"
ASGI_APPLICATION = "webui.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_default_db = f"sqlite:///{config.DATA_DIR / 'corral.sqlite3'}"
# Connections are kept between requests and tasks (opening one costs milliseconds on every
# message sent and every answer claimed), and checked before reuse: one broken by a
# database restart is replaced, not used.
DATABASES = {
    "default": dj_database_url.parse(
        config.DATABASE_URL or _default_db,
        conn_max_age=config.DB_CONN_MAX_AGE_S,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and tests write at once: WAL lets readers through, IMMEDIATE avoids
    # lock upgrades failing, and the timeout waits out short writes instead of erroring.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    DATABASES["default"]["TEST"] = {"NAME": str(config.DATA_DIR / "test_corral.sqlite3")}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # libpq's own timeouts (a DATABASE_URL's query parameters win): a cut connection fails
    # within CORRAL_DB_NETWORK_TIMEOUT_S, so heartbeats, checkpoints and endings retry on a
    # new one instead of hanging.
    _timeout = config.DB_NETWORK_TIMEOUT_S
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    for _name, _value in {
        "connect_timeout": max(2, _timeout),
        "keepalives": 1,
        "keepalives_idle": max(1, _timeout // 2),
        "keepalives_interval": max(1, _timeout // 6),
        "keepalives_count": 3,
        "tcp_user_timeout": _timeout * 1000,
    }.items():
        _options.setdefault(_name, _value)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# django-axes first: it refuses a locked-out username + address before any password check.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = config.LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=config.LOGIN_COOLOFF_MINUTES)
# The pair, not either alone: wrong guesses lock that username only from the guesser's
# address, so nobody elsewhere can lock a person out of their account.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "accounts/locked_out.html"
AXES_HTTP_RESPONSE_CODE = 429
# REMOTE_ADDR unless CORRAL_TRUSTED_PROXY_COUNT declares proxies (webui.accounts.lockouts).
AXES_CLIENT_IP_CALLABLE = "webui.accounts.lockouts.client_ip"
AXES_IPWARE_PROXY_COUNT = config.TRUSTED_PROXY_COUNT or None
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = config.DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True  # serve from static/ directly; collectstatic is optional

# Redis pub/sub: a group send is one PUBLISH and Redis pushes it to each web process,
# where the list-based layer took four round trips to send and four more to receive each
# event (a burst of 32 answers: the round a third shorter, the stack's CPU per answer a
# quarter to a third lower; docs/benchmarks.md). An event reaches the processes
# subscribed at that moment or none: events are hints and clients resync from the
# database (docs/architecture.md).
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [config.redis_url()]},
    }
}

SESSION_COOKIE_SECURE = config.SECURE_COOKIES
CSRF_COOKIE_SECURE = config.SECURE_COOKIES
SECURE_HSTS_SECONDS = config.SECURE_HSTS_SECONDS
SECURE_HSTS_INCLUDE_SUBDOMAINS = config.SECURE_HSTS_INCLUDE_SUBDOMAINS
SECURE_HSTS_PRELOAD = config.SECURE_HSTS_PRELOAD
SECURE_SSL_REDIRECT = config.SECURE_SSL_REDIRECT
SECURE_REDIRECT_EXEMPT = config.SECURE_REDIRECT_EXEMPT
SECURE_PROXY_SSL_HEADER = config.SECURE_PROXY_SSL_HEADER
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {"corral": {"level": "INFO"}},
}

CORRAL = {
    "MAX_MESSAGE_CHARS": config.MAX_MESSAGE_CHARS,
    "MAX_ACTIVE_PER_USER": config.MAX_ACTIVE_PER_USER,
    "TOKENS_PER_DAY": config.TOKENS_PER_DAY,
    "MESSAGES_PER_MINUTE": config.MESSAGES_PER_MINUTE,
    "MAX_QUEUED_PER_POOL": config.MAX_QUEUED_PER_POOL,
    "MAX_IMPORT_BYTES": config.MAX_IMPORT_BYTES,
    "MAX_IMPORTS_PER_HOUR": config.MAX_IMPORTS_PER_HOUR,
}
