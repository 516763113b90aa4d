"""Settings for every machine, read from the environment.

The defaults give the embedded mode (SQLite under ``var/``, a Celery broker on the file system)
so that a newcomer runs the product with one command; production sets ``DATABASE_URL``,
``CELERY_BROKER_URL``, ``SECRET_KEY``, ``DEBUG=false`` and ``MEDIA_ROOT`` (see
``platform/env.example``). There are no per-machine settings forks.
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

VAR_DIR = Path(env("QUORUM_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = env("SECRET_KEY", default="embedded-mode-insecure-key-change-me-in-production")
DEBUG = env.bool("DEBUG", default=True)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "labeling",
    "training",
    "frontend",
]

# Token-authenticated crowd next/vote requests are answered in front of all of these (the crowd
# lane, quorum/wsgi.py): a middleware that must see those requests belongs there as well.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "frontend.middleware.SiteNotFoundPage",
]

ROOT_URLCONF = "quorum.urls"
WSGI_APPLICATION = "quorum.wsgi.application"
ASGI_APPLICATION = "quorum.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'quorum.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL + a busy timeout let the web process and the embedded worker share the file.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            # Take the write lock when a transaction starts, so two writers never deadlock.
            "transaction_mode": "IMMEDIATE",
        }
    )
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    # A health check is a round trip at the start of every request. Without it, a connection
    # that broke (a database restart) fails one request, and Django drops it when that request
    # ends; the crowd loop's requests are two round trips each, so the check is off by default.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("CONN_HEALTH_CHECKS", default=False)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
PASSWORD_HASHERS = env.list(
    "PASSWORD_HASHERS",
    default=[
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    ],
)

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(VAR_DIR / "static")))
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env("MEDIA_ROOT", default=str(VAR_DIR / "media")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": env(
            "STATICFILES_STORAGE",
            default="django.contrib.staticfiles.storage.StaticFilesStorage",
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# Uploads: one file may be this large; larger ones are refused with a 413-style message.
QUORUM_MAX_UPLOAD_BYTES = env.int("QUORUM_MAX_UPLOAD_BYTES", default=512 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FILES = env.int("DATA_UPLOAD_MAX_NUMBER_FILES", default=2000)
# Images above this many pixels are refused as decompression bombs.
QUORUM_MAX_IMAGE_PIXELS = env.int("QUORUM_MAX_IMAGE_PIXELS", default=100_000_000)

# Real data shipped beside the repository (see README); in the wild, the loaders download it.
QUORUM_DATA_DIR = Path(env("QUORUM_DATA_DIR", default=str(BASE_DIR.parent / "shared" / "data")))
# On PostgreSQL the crowd loop's next/vote run as database functions (migration 0004), one
# round trip each; off, the same Python services serve them with a statement per step.
QUORUM_CROWD_DB_FUNCTIONS = env.bool("QUORUM_CROWD_DB_FUNCTIONS", default=True)
# Seconds a process remembers which user an API token belongs to (quorum/authentication.py).
QUORUM_TOKEN_CACHE_SECONDS = env.float("QUORUM_TOKEN_CACHE_SECONDS", default=5.0)
# Token-authenticated next/vote requests are answered in front of Django's handler (the WSGI
# application, quorum/wsgi.py), one database function call each (labeling/api/crowd_lane.py;
# PostgreSQL with the functions on); off, they take the same path as every other request. Its
# calls are prepared statements: behind a pooler in transaction mode, use one that keeps them
# (PgBouncer >= 1.21).
QUORUM_CROWD_LANE = env.bool("QUORUM_CROWD_LANE", default=True)
# A training worker's lease, renewed by a thread every third of it: a dead holder on another
# host is known within this long. A run whose holder is dead and that no worker took up again
# within STALE_MINUTES of its last sign of life is failed (resumable) by the periodic sweep.
QUORUM_TRAINING_LEASE_SECONDS = env.int("QUORUM_TRAINING_LEASE_SECONDS", default=30)
QUORUM_TRAINING_STALE_MINUTES = env.float("QUORUM_TRAINING_STALE_MINUTES", default=2)
QUORUM_CACHE_DIR = Path(env("QUORUM_CACHE_DIR", default=str(VAR_DIR / "cache")))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "quorum.authentication.FastTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "rest_framework.views.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Quorum API",
    "DESCRIPTION": "Crowd labelling, aggregation, expert review and training for medical images.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "quorum.openapi.integer_path_ids_are_non_negative",
    ],
}

# Celery. Embedded default: kombu's file-system transport, so no broker server is needed.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="filesystem://localhost//")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
        "control_folder": str(_broker_dir / "control"),
    }
else:
    # Long training runs: a message un-acked for this long is redelivered to another worker.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=24 * 3600)
    }
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {"training.tasks.run_training": {"queue": "gpu"}}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# One console handler, on the root logger: each record is printed once, and a refused request
# (4xx) is one warning line without a traceback (quorum/log.py).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "client_error": {"()": "quorum.log.ClientErrorWithoutTraceback"},
        "access_line_logged": {"()": "quorum.log.AccessLineAlreadyLogged"},
    },
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Django's default config gives "django" a console handler of its own (DEBUG only),
        # which printed every django.request record a second time beside the root's.
        "django": {"handlers": [], "level": "INFO"},
        "django.request": {"filters": ["client_error"]},
        # Django's default sends runserver's lines to a handler of their own and not to the root;
        # without it they reached Python's last-resort handler, unformatted.
        "django.server": {
            "level": "WARNING", "filters": ["access_line_logged"], "propagate": True,
        },
    },
}
