"""No row every vote of a project shares, and fewer index writes per vote and lease.

- ``VoteTally`` replaces ``Project.votes_since_aggregation``: a vote adds one to its worker's
  stripe (worker id % 16) instead of updating, and locking until its commit, the project row.
- The vote's project and label and the lease's project keep no database constraint: each
  check locked the project (or class) row FOR KEY SHARE in every vote and lease.
- Indexes nothing reads go (item project/is_gold/is_holdout/needs_review, lease project and
  expires_at, vote label): every vote updates item.vote_count, which writes an entry into each
  of the item's indexes. Gold, the review queue and a worker's gold answers get small partial
  indexes; a lease is found by (item, worker).
- PostgreSQL: labeling/migrations/sql/0008_vote_tally.sql (quorum_record_vote on the tally, the
  project's settings read with the lease; autovacuum and analyze thresholds for the hot tables).
"""

from importlib import import_module
from pathlib import Path

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

SQL = Path(__file__).with_name("sql")
HOT_TABLES = ["labeling_item", "labeling_assignment", "labeling_vote", "labeling_votetally"]
# SQLite rebuilds a table to alter a column, which drops its triggers and refuses to rename a
# table a trigger names: 0006's item_open triggers come off first and go back on (refreshed) last.
ITEM_OPEN_SQLITE = import_module("labeling.migrations.0006_vote_item_open").SQLITE


def drop_sqlite_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        schema_editor.execute("DROP TRIGGER IF EXISTS item_open_changed")
        schema_editor.execute("DROP TRIGGER IF EXISTS vote_item_open_on_insert")


def create_sqlite_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        for statement in ITEM_OPEN_SQLITE:
            schema_editor.execute(statement)


def _record_vote_of(name: str) -> str:
    source = (SQL / name).read_text()
    start = source.index("CREATE OR REPLACE FUNCTION quorum_record_vote(")
    return source[start : source.index("$$;", source.index("BEGIN", start)) + 3]


def counters_to_tallies(apps, schema_editor):
    Project = apps.get_model("labeling", "Project")
    VoteTally = apps.get_model("labeling", "VoteTally")
    VoteTally.objects.bulk_create(
        VoteTally(project_id=pk, stripe=0, votes=n)
        for pk, n in Project.objects.filter(votes_since_aggregation__gt=0).values_list(
            "id", "votes_since_aggregation"
        )
    )


def tallies_to_counters(apps, schema_editor):
    Project = apps.get_model("labeling", "Project")
    VoteTally = apps.get_model("labeling", "VoteTally")
    totals = VoteTally.objects.values("project_id").annotate(n=models.Sum("votes"))
    for row in totals:
        Project.objects.filter(pk=row["project_id"]).update(votes_since_aggregation=row["n"])


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute((SQL / "0008_vote_tally.sql").read_text())


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_record_vote_of("0007_record_vote_counter_last.sql"))
        for table in HOT_TABLES:
            schema_editor.execute(
                f"ALTER TABLE {table} RESET (autovacuum_vacuum_scale_factor, "
                "autovacuum_analyze_scale_factor, autovacuum_vacuum_insert_scale_factor, "
                "autovacuum_vacuum_threshold, autovacuum_analyze_threshold)"
            )


class Migration(migrations.Migration):
    dependencies = [
        ("labeling", "0007_record_vote_counter_last"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunPython(drop_sqlite_triggers, create_sqlite_triggers),
        migrations.CreateModel(
            name="VoteTally",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("stripe", models.PositiveSmallIntegerField()),
                ("votes", models.PositiveIntegerField(default=0)),
                ("project", models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name="vote_tallies", to="labeling.project")),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("project", "stripe"), name="votetally_unique_stripe")
                ],
            },
        ),
        migrations.RunPython(counters_to_tallies, tallies_to_counters),
        migrations.RemoveField(
            model_name="project",
            name="votes_since_aggregation",
        ),
        migrations.AlterField(
            model_name="assignment",
            name="project",
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name="assignments", to="labeling.project"),
        ),
        migrations.AlterField(
            model_name="vote",
            name="project",
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name="votes", to="labeling.project"),
        ),
        migrations.AlterField(
            model_name="vote",
            name="label",
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.RESTRICT, related_name="votes", to="labeling.labelclass"),
        ),
        migrations.AlterField(
            model_name="item",
            name="project",
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name="items", to="labeling.project"),
        ),
        migrations.AlterField(
            model_name="item",
            name="is_gold",
            field=models.BooleanField(default=False),
        ),
        migrations.AlterField(
            model_name="item",
            name="is_holdout",
            field=models.BooleanField(default=False),
        ),
        migrations.AlterField(
            model_name="item",
            name="needs_review",
            field=models.BooleanField(default=False),
        ),
        migrations.AlterField(
            model_name="assignment",
            name="expires_at",
            field=models.DateTimeField(),
        ),
        migrations.AddIndex(
            model_name="item",
            index=models.Index(condition=models.Q(("is_gold", True)), fields=["project"], name="item_gold_idx"),
        ),
        migrations.AddIndex(
            model_name="item",
            index=models.Index(condition=models.Q(("needs_review", True)), fields=["project"], name="item_review_idx"),
        ),
        migrations.AddIndex(
            model_name="assignment",
            index=models.Index(fields=["item", "worker"], name="lease_item_worker_idx"),
        ),
        migrations.RemoveIndex(
            model_name="assignment",
            name="lease_live_idx",
        ),
        migrations.AddIndex(
            model_name="vote",
            index=models.Index(condition=models.Q(("gold_correct__isnull", False), ("was_gold", True)), fields=["project", "worker"], name="vote_worker_gold_idx"),
        ),
        migrations.RunPython(forward, backward),
        migrations.RunPython(create_sqlite_triggers, drop_sqlite_triggers),
    ]
