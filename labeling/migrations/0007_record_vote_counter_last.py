"""quorum_record_vote updates the project's shared counter last (sql/0007_record_vote_counter_last.sql)."""

from pathlib import Path

from django.db import migrations

SQL = Path(__file__).with_name("sql")


def _record_vote_of(name: str) -> str:
    source = (SQL / name).read_text()
    start = source.index("CREATE OR REPLACE FUNCTION quorum_record_vote(")
    return source[start : source.index("$$;", source.index("BEGIN", start)) + 3]


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_record_vote_of("0007_record_vote_counter_last.sql"))


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_record_vote_of("0004_crowd_functions.sql"))


class Migration(migrations.Migration):
    dependencies = [("labeling", "0006_vote_item_open")]

    operations = [migrations.RunPython(forward, backward)]
