# Django's own test suite against MariaDB: directly or through sqlswitch, where
# sqlswitch-clients says. PyMySQL stands in for mysqlclient (no C build); Django connects with
# CLIENT_FOUND_ROWS as with mysqlclient, which is what issue 34 is about.
import pymysql

from sqlswitch_suite import *  # noqa: F401,F403
from sqlswitch_suite import databases

pymysql.install_as_MySQLdb()

DATABASES = databases("django.db.backends.mysql", options={"charset": "utf8mb4"}, test={"CHARSET": "utf8mb4"})
