# Django's own test suite against MariaDB: directly or through sqlswitch, where
# sqlswitch-clients says (scripts/regress; tests/src/bin/clients.rs sets the variables).
# PyMySQL stands in for mysqlclient (no C build); Django connects with CLIENT_FOUND_ROWS as
# with mysqlclient, which is what issue 34 is about.
import os

import pymysql

pymysql.install_as_MySQLdb()

_db = {
    "ENGINE": "django.db.backends.mysql",
    "HOST": os.environ["SUITE_DB_HOST"],
    "PORT": os.environ["SUITE_DB_PORT"],
    "USER": os.environ["SUITE_DB_USER"],
    "PASSWORD": os.environ["SUITE_DB_PASSWORD"],
    "NAME": os.environ["SUITE_DB_NAME"],
    "OPTIONS": {"charset": "utf8mb4"},
}

DATABASES = {
    "default": dict(_db, TEST={"NAME": "test_django_default", "CHARSET": "utf8mb4"}),
    "other": dict(_db, TEST={"NAME": "test_django_other", "CHARSET": "utf8mb4"}),
}

SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
