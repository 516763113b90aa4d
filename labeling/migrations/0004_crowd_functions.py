"""The crowd loop's PostgreSQL functions (labeling/migrations/sql/0004_crowd_functions.sql).

Other databases get nothing: there the Python services serve the crowd loop.
"""

from pathlib import Path

from django.db import migrations

SQL = Path(__file__).with_name("sql") / "0004_crowd_functions.sql"
FUNCTIONS = [
    "quorum_record_vote(integer, bigint, text, text, text, text, timestamptz, boolean, boolean, timestamptz)",
    "quorum_next_lease(integer, bigint, timestamptz, timestamptz, bigint[], boolean, integer, integer, timestamptz)",
    "quorum_worker_progress(integer, bigint, timestamptz)",
]


def create_functions(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(SQL.read_text())


def drop_functions(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for signature in FUNCTIONS:
            schema_editor.execute(f"DROP FUNCTION IF EXISTS {signature}")


class Migration(migrations.Migration):
    dependencies = [("labeling", "0003_crowd_hot_path_indexes")]

    operations = [migrations.RunPython(create_functions, drop_functions)]
