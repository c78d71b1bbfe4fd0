# Django's own test suite against PostgreSQL: directly or through sqlswitch, where
# sqlswitch-clients says.
from sqlswitch_suite import *  # noqa: F401,F403
from sqlswitch_suite import databases

DATABASES = databases("django.db.backends.postgresql")
