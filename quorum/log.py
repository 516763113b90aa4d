"""Logging filters: each refused request is one warning line on the console.

Django logs a 4xx through ``django.request`` with the exception's traceback (a 403 raised by a
role check is no fault of the code), ``runserver`` logs the same request again as an access line,
and Django's own console handler on the ``django`` logger printed every record a second time
beside the root handler (settings.LOGGING removes that one).
"""

from __future__ import annotations

import logging


class ClientErrorWithoutTraceback(logging.Filter):
    """On a 4xx record, replace the traceback by the exception's message (when it has one).

    A 5xx keeps its traceback: that one is a bug to read.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if status is not None and 400 <= status < 500 and record.exc_info:
            exc = record.exc_info[1]
            reason = str(exc) if exc is not None else ""
            if reason and reason not in record.getMessage():
                record.msg = f"{record.getMessage()} ({reason})"
                record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


class AccessLineAlreadyLogged(logging.Filter):
    """Drop runserver's access line for a 4xx/5xx answered by Django: ``django.request`` has
    logged that request already. Lines runserver writes for requests it refused itself (no
    Django response: a malformed request line) are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        is_access_line = isinstance(record.args, tuple) and len(record.args) == 3
        return not (is_access_line and status is not None and status >= 400)
