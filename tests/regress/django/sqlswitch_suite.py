# What both settings modules share: the connection sqlswitch-clients gives in SUITE_DB_*
# (scripts/regress; tests/src/bin/clients.rs), and Django's test-suite defaults.
import os


def databases(engine, options=None, test=None):
    """Django's DATABASES: `default` and `other` on the same server, each with its test database."""
    base = {
        "ENGINE": engine,
        "HOST": os.environ["SUITE_DB_HOST"],
        "PORT": os.environ["SUITE_DB_PORT"],
        "USER": os.environ["SUITE_DB_USER"],
        "PASSWORD": os.environ["SUITE_DB_PASSWORD"],
        "NAME": os.environ["SUITE_DB_NAME"],
        "OPTIONS": options or {},
    }
    return {
        alias: dict(base, TEST=dict(test or {}, NAME=f"test_django_{alias}")) for alias in ("default", "other")
    }


SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
