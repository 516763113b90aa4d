"""Project admins label too (issue 18): the crowd functions accept the 'admin' role beside
'crowd' (labeling/migrations/sql/0010_admins_label.sql), as labeling.selectors.role_allows
does for the Python path. PostgreSQL only; nothing changes in the schema.
"""

from pathlib import Path

from django.db import migrations

SQL = Path(__file__).with_name("sql")


def _function_of(name: str, function: str) -> str:
    source = (SQL / name).read_text()
    start = source.index(f"CREATE OR REPLACE FUNCTION {function}(")
    return source[start : source.index("$$;", source.index("$$", start) + 2) + 3]


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute((SQL / "0010_admins_label.sql").read_text())


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for function in ("quorum_serve_next", "quorum_record_vote"):
            schema_editor.execute(_function_of("0009_daily_vote_count.sql", function))


class Migration(migrations.Migration):
    dependencies = [("labeling", "0009_daily_vote_count")]

    operations = [migrations.RunPython(forward, backward)]
