# Django's own test suite against PostgreSQL: directly or through sqlswitch, where
# sqlswitch-clients says (scripts/regress; tests/src/bin/clients.rs sets the variables).
import os

_db = {
    "ENGINE": "django.db.backends.postgresql",
    "HOST": os.environ["SUITE_DB_HOST"],
    "PORT": os.environ["SUITE_DB_PORT"],
    "USER": os.environ["SUITE_DB_USER"],
    "PASSWORD": os.environ["SUITE_DB_PASSWORD"],
    "NAME": os.environ["SUITE_DB_NAME"],
}

DATABASES = {
    "default": dict(_db, TEST={"NAME": "test_django_default"}),
    "other": dict(_db, TEST={"NAME": "test_django_other"}),
}

SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
