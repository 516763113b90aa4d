"""Crowd quality control (issue 18): gold on a per-worker schedule, and the vote returns the
worker's gold record per expert class for the one blocking rule in Python
(labeling/migrations/sql/0011_gold_schedule_and_standing.sql). PostgreSQL only; nothing changes
in the schema.
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
        schema_editor.execute((SQL / "0011_gold_schedule_and_standing.sql").read_text())


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for function in ("quorum_serve_next", "quorum_next_lease", "quorum_record_vote", "quorum_gold_slot"):
            schema_editor.execute(f"DROP FUNCTION IF EXISTS {function}")
        schema_editor.execute(_function_of("0004_crowd_functions.sql", "quorum_next_lease"))
        for function in ("quorum_serve_next", "quorum_record_vote"):
            schema_editor.execute(_function_of("0010_admins_label.sql", function))


class Migration(migrations.Migration):
    dependencies = [("labeling", "0010_admins_label")]

    operations = [migrations.RunPython(forward, backward)]
