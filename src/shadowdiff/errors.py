"""The errors shadowdiff raises for a person to read: each message is one line, ready to print
after `shadowdiff: error:` with exit status 2. Everything else is a bug and keeps its traceback.

    Exception
    ├── ConfigError        a bad config file or flag
    ├── StoreError         the store cannot be used (unreadable, not ours, another schema)
    │   └── StoreUnavailable   for now: locked, busy, a disk error, the database down
    ├── RecordingError     a recording that cannot be read at all
    └── StartupError       the proxy cannot start serving

Driver errors (sqlite3, psycopg) never travel past the store's backends.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A bad config file or flag; the message is one line, ready for the user."""


class StoreError(Exception):
    """The store cannot be used (unreadable, not a shadowdiff store, other schema version)."""


class StoreUnavailable(StoreError):
    """The store cannot be used for now (a SQLite file locked or busy past its timeout, a disk
    error; a database unreachable, dropped or timed out): transient. The recorder keeps the
    batch and retries with the next one; the command line reports it in one line."""


class RecordingError(Exception):
    """A recording that cannot be read at all; the message is one line naming the file."""


class StartupError(Exception):
    """The proxy cannot start serving; the message says why."""
