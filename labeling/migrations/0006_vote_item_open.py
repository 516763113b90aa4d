"""Vote.item_open: the voted item's open state, kept by triggers, for the progress line's counts.

PostgreSQL: labeling/migrations/sql/0006_vote_item_open.sql (triggers, backfill, and
quorum_worker_progress reading the new indexes). SQLite: the same two triggers in its dialect.
"""

from pathlib import Path

from django.conf import settings
from django.db import migrations, models

SQL = Path(__file__).with_name("sql") / "0006_vote_item_open.sql"
OPEN = "(NOT {t}.is_gold AND {t}.vote_count < {t}.votes_wanted)"
SQLITE = [
    f"""CREATE TRIGGER vote_item_open_on_insert AFTER INSERT ON labeling_vote BEGIN
        UPDATE labeling_vote SET item_open = (SELECT {OPEN.format(t="i")} FROM labeling_item i
                                              WHERE i.id = NEW.item_id)
         WHERE id = NEW.id;
    END""",
    f"""CREATE TRIGGER item_open_changed AFTER UPDATE OF vote_count, votes_wanted, is_gold
        ON labeling_item WHEN {OPEN.format(t="OLD")} IS NOT {OPEN.format(t="NEW")} BEGIN
        UPDATE labeling_vote SET item_open = {OPEN.format(t="NEW")} WHERE item_id = NEW.id;
    END""",
    f"""UPDATE labeling_vote SET item_open = (SELECT {OPEN.format(t="i")} FROM labeling_item i
                                              WHERE i.id = labeling_vote.item_id)""",
]


def create_triggers(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(SQL.read_text())
    elif vendor == "sqlite":
        for statement in SQLITE:
            schema_editor.execute(statement)
    else:
        raise NotImplementedError(f"Quorum runs on PostgreSQL or SQLite, not {vendor}")


def drop_triggers(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(
            "DROP TRIGGER IF EXISTS item_open_changed ON labeling_item;"
            "DROP TRIGGER IF EXISTS vote_item_open_on_insert ON labeling_vote;"
            "DROP FUNCTION IF EXISTS quorum_item_open_changed(); DROP FUNCTION IF EXISTS quorum_vote_item_open();"
        )
        # 0004's progress function, which joins every vote of the worker to its item.
        source = (Path(__file__).with_name("sql") / "0004_crowd_functions.sql").read_text()
        start = source.index("CREATE OR REPLACE FUNCTION quorum_worker_progress")
        schema_editor.execute(source[start : source.index("$$;", start) + 3])
    elif vendor == "sqlite":
        schema_editor.execute("DROP TRIGGER IF EXISTS item_open_changed")
        schema_editor.execute("DROP TRIGGER IF EXISTS vote_item_open_on_insert")


class Migration(migrations.Migration):
    dependencies = [
        ("labeling", "0005_drop_covered_fk_indexes"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="vote",
            name="vote_project_worker_idx",
        ),
        migrations.AddField(
            model_name="vote",
            name="item_open",
            field=models.BooleanField(
                default=True,
                editable=False,
                help_text="The item still wants votes (not gold, vote_count < votes_wanted). Database triggers keep it (migration 0006), so a worker's progress line reads an index, not their whole history.",
            ),
        ),
        migrations.AddIndex(
            model_name="vote",
            index=models.Index(
                fields=["project", "worker", "created_at"], name="vote_worker_day_idx"
            ),
        ),
        migrations.AddIndex(
            model_name="vote",
            index=models.Index(
                condition=models.Q(("item_open", True)),
                fields=["project", "worker"],
                name="vote_worker_open_idx",
            ),
        ),
        migrations.AlterField(
            model_name="vote",
            name="created_at",
            field=models.DateTimeField(auto_now_add=True),
        ),
        migrations.RunPython(create_triggers, drop_triggers),
    ]
