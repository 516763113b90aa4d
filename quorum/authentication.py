"""API token authentication with one fixed read per request, remembered for a few seconds.

DRF's ``TokenAuthentication`` builds an ORM query (token joined to its user) on every request;
on the crowd loop, where each request is a few milliseconds of work, building that query cost
more than running it. This class runs the same join as one fixed SQL statement and hands back
the same objects (a ``Token`` and its ``User``, every field loaded), with the same errors.

A process also remembers a token's answer for ``QUORUM_TOKEN_CACHE_SECONDS`` (default 5;
0 turns it off): a crowd worker sends two requests a cycle, and the read is a round trip each.
Saving or deleting a user or a token forgets everything this process remembered at once; other
processes notice within those seconds (a revoked token or a deactivated user keeps working there
for at most that long).
"""

from __future__ import annotations

import copy
import threading
import time
from functools import cache

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token


@cache
def _token_query() -> tuple[str, list[str], list[str]]:
    user_model = get_user_model()
    qn = connection.ops.quote_name
    token_fields = [f.attname for f in Token._meta.concrete_fields]
    user_fields = [f.attname for f in user_model._meta.concrete_fields]
    user_columns = [f.column for f in user_model._meta.concrete_fields]
    columns = [f"t.{qn(f.column)}" for f in Token._meta.concrete_fields]
    columns += [f"u.{qn(c)}" for c in user_columns]
    sql = (
        f"SELECT {', '.join(columns)} FROM {qn(Token._meta.db_table)} t "
        f"JOIN {qn(user_model._meta.db_table)} u "
        f"ON u.{qn(user_model._meta.pk.column)} = t.{qn(Token._meta.get_field('user').column)} "
        f"WHERE t.{qn(Token._meta.pk.column)} = %s"
    )
    return sql, token_fields, user_fields


_remembered: dict[str, tuple[float, object, object]] = {}
_lock = threading.Lock()
_MAX_REMEMBERED = 10_000


@receiver(post_save, sender=Token)
@receiver(post_delete, sender=Token)
@receiver(post_save, sender=settings.AUTH_USER_MODEL)
@receiver(post_delete, sender=settings.AUTH_USER_MODEL)
def forget_tokens(**kwargs) -> None:
    with _lock:
        _remembered.clear()


def _copies(user, token):
    # A request may set attributes on its user; the next request must not see them.
    user, token = copy.copy(user), copy.copy(token)
    token.user = user
    return user, token


class FastTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <key>``, as DRF's, read with one fixed statement."""

    def authenticate_credentials(self, key: str):
        user, token = self._remembered(key)
        return _copies(user, token) if settings.QUORUM_TOKEN_CACHE_SECONDS > 0 else (user, token)

    def remembered_user(self, key: str):
        """The token's user, the process's remembered object itself rather than a copy: for a
        caller that only reads it (the crowd lane). The same checks and errors."""
        return self._remembered(key)[0]

    def _remembered(self, key: str):
        ttl = settings.QUORUM_TOKEN_CACHE_SECONDS
        now = time.monotonic()
        hit = _remembered.get(key) if ttl > 0 else None
        if hit is not None and now - hit[0] < ttl:
            return hit[1], hit[2]
        user, token = self._read(key)
        if ttl > 0:
            with _lock:
                if len(_remembered) >= _MAX_REMEMBERED:
                    _remembered.clear()
                _remembered[key] = (now, user, token)
        return user, token

    def _read(self, key: str):
        sql, token_fields, user_fields = _token_query()
        with connection.cursor() as cursor:
            cursor.execute(sql, [key])
            row = cursor.fetchone()
        if row is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        n = len(token_fields)
        user = get_user_model().from_db(connection.alias, user_fields, row[n:])
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        token = Token.from_db(connection.alias, token_fields, row[:n])
        token.user = user
        return user, token
