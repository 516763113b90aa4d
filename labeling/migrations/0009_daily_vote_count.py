"""A worker's votes today as a counter, and a crowd worker's next request in one call.

- ``DailyVoteCount``: the worker's votes in a project since a midnight, kept by triggers on the
  vote table (PostgreSQL): the progress line counted them on every request.
- PostgreSQL: labeling/migrations/sql/0009_daily_vote_count.sql (the triggers,
  ``quorum_worker_progress`` on the counter, ``quorum_serve_next``: the project, the worker's
  role, block and classes, and ``quorum_next_lease`` in one call, for the crowd lane;
  ``quorum_record_vote`` finds whether work is left on the open-items index: the planner's
  sequential scan read every closed item on a project near its end).
"""

from pathlib import Path

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

SQL = Path(__file__).with_name("sql")


def _function_of(name: str, function: str) -> str:
    source = (SQL / name).read_text()
    start = source.index(f"CREATE OR REPLACE FUNCTION {function}(")
    return source[start : source.index("$$;", source.index("$$", start) + 2) + 3]


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute((SQL / "0009_daily_vote_count.sql").read_text())


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_function_of("0008_vote_tally.sql", "quorum_record_vote"))
        schema_editor.execute("DROP FUNCTION IF EXISTS quorum_serve_next")
        schema_editor.execute("DROP TRIGGER IF EXISTS vote_daily_count ON labeling_vote")
        schema_editor.execute("DROP FUNCTION IF EXISTS quorum_daily_vote_count")
        # 0006's is LANGUAGE sql STABLE: replacing this VOLATILE plpgsql one needs a drop first.
        schema_editor.execute("DROP FUNCTION IF EXISTS quorum_worker_progress")
        schema_editor.execute(_function_of("0006_vote_item_open.sql", "quorum_worker_progress"))


class Migration(migrations.Migration):
    dependencies = [
        ("labeling", "0008_vote_tally"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="DailyVoteCount",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("day_start", models.DateTimeField()),
                ("votes", models.IntegerField(default=0)),
                ("project", models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name="daily_vote_counts", to="labeling.project")),
                ("worker", models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name="+", to=settings.AUTH_USER_MODEL)),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("project", "worker"), name="dailyvotecount_unique_worker")
                ],
            },
        ),
        migrations.RunPython(forward, backward),
    ]
