"""Region votes (issue 17) on the database-function path: gold from items with an expert's
regions, the lane's next payload for region projects, and every vote on a region project sent
to the Python service (labeling/migrations/sql/0014_region_votes.sql says why). PostgreSQL
only; nothing changes in the schema.
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
        schema_editor.execute((SQL / "0014_region_votes.sql").read_text())


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        # quorum_serve_next's row changed shape: drop it before 0011's version is made again.
        schema_editor.execute("DROP FUNCTION IF EXISTS quorum_serve_next")
        for function in ("quorum_next_lease", "quorum_serve_next", "quorum_record_vote"):
            schema_editor.execute(_function_of("0011_gold_schedule_and_standing.sql", function))


class Migration(migrations.Migration):
    dependencies = [("labeling", "0013_region_tasks")]

    operations = [migrations.RunPython(forward, backward)]
