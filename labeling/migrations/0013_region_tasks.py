"""Region tasks: task types, the match rule, region votes, expert region answers, consensus.

SQLite rebuilds labeling_vote to add its check constraint, which breaks the item_open triggers
of 0006 that name the table: they are dropped first and made again last, as 0008 does.
"""

from importlib import import_module

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

_0008 = import_module("labeling.migrations.0008_vote_tally")


class Migration(migrations.Migration):

    dependencies = [
        ('labeling', '0012_auto_method'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunPython(_0008.drop_sqlite_triggers, _0008.create_sqlite_triggers),
        migrations.CreateModel(
            name='RegionAnswer',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('source', models.CharField(choices=[('import', 'Imported with the images'), ('holdout', 'Blind hold-out labelling'), ('review', 'Adjudication of crowd disagreement'), ('tiebreak', 'Hold-out disagreement resolved')], max_length=10)),
                ('note', models.TextField(blank=True)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
            ],
            options={
                'ordering': ['created_at', 'id'],
            },
        ),
        migrations.CreateModel(
            name='RegionConsensus',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('regions', models.JSONField(default=list, help_text='[{"label": index, "shape": ..., "points" or "rle": ..., "confidence": p}]')),
                ('probability_map', models.FileField(blank=True, max_length=300, upload_to='consensus/')),
                ('confidence', models.FloatField(help_text="How sure the consensus is, 0..1 (review below the project's threshold).")),
                ('agreement', models.FloatField(blank=True, help_text='Mean pairwise F1 (points, boxes) or Dice (masks).', null=True)),
            ],
        ),
        migrations.AddField(
            model_name='project',
            name='max_regions',
            field=models.PositiveIntegerField(default=300, help_text='Region projects: the most regions one answer may hold.'),
        ),
        migrations.AddField(
            model_name='project',
            name='region_match_distance',
            field=models.FloatField(default=10.0, help_text='Points: two marks within this many pixels are one object.'),
        ),
        migrations.AddField(
            model_name='project',
            name='region_match_iou',
            field=models.FloatField(default=0.5, help_text='Boxes: two boxes overlapping at this IoU or more are one object.'),
        ),
        migrations.AddField(
            model_name='region',
            name='geometry',
            field=models.JSONField(blank=True, default=dict, help_text='Polygon: {"points": [[x, y], ...]}; mask: {"rle": {"size": [h, w], "counts": [...]}}.'),
        ),
        migrations.AddField(
            model_name='region',
            name='shape',
            field=models.CharField(choices=[('point', 'Point'), ('box', 'Box'), ('polygon', 'Polygon'), ('mask', 'Mask (run-length encoded)')], default='box', max_length=8),
        ),
        migrations.AddField(
            model_name='vote',
            name='regions',
            field=models.JSONField(blank=True, help_text='A region answer, possibly empty: [{"label": class index, "shape": "point" | "box" | "polygon" | "mask", "points": [[x, y], ...] or "rle": {...}}] in image pixels.', null=True),
        ),
        migrations.AddField(
            model_name='workerreliability',
            name='detail',
            field=models.JSONField(blank=True, default=dict, help_text='Region runs: sensitivity, precision (points, boxes) or specificity (masks).'),
        ),
        migrations.AlterField(
            model_name='project',
            name='task_type',
            field=models.CharField(choices=[('image', 'Image classification'), ('bag', 'Bag of patches (multiple-instance learning)'), ('points', 'Points on each object'), ('boxes', 'Boxes around each object'), ('masks', 'Masks (polygons or brush)')], default='image', max_length=16),
        ),
        migrations.AlterField(
            model_name='vote',
            name='kind',
            field=models.CharField(choices=[('label', 'Class label'), ('regions', 'Regions (points, boxes or masks)'), ('unsure', 'Unsure'), ('skip', 'Skip')], default='label', max_length=8),
        ),
        migrations.AddConstraint(
            model_name='vote',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('kind', 'regions'), ('regions__isnull', False)), models.Q(models.Q(('kind', 'regions'), _negated=True), ('regions__isnull', True)), _connector='OR'), name='vote_regions_iff_kind_regions'),
        ),
        migrations.AddField(
            model_name='regionanswer',
            name='expert',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AddField(
            model_name='regionanswer',
            name='item',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='region_answers', to='labeling.item'),
        ),
        migrations.AddField(
            model_name='item',
            name='expert_regions',
            field=models.ForeignKey(blank=True, help_text='Region projects: the final expert set of regions (import, hold-out or review).', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='labeling.regionanswer'),
        ),
        migrations.AddField(
            model_name='region',
            name='answer',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='regions', to='labeling.regionanswer'),
        ),
        migrations.AddField(
            model_name='regionconsensus',
            name='item',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='region_consensus', to='labeling.item'),
        ),
        migrations.AddField(
            model_name='regionconsensus',
            name='run',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='region_consensus', to='labeling.aggregationrun'),
        ),
        migrations.AddConstraint(
            model_name='regionanswer',
            constraint=models.UniqueConstraint(condition=models.Q(('expert__isnull', False)), fields=('item', 'expert', 'source'), name='regionanswer_one_per_expert_source'),
        ),
        migrations.AddConstraint(
            model_name='regionconsensus',
            constraint=models.UniqueConstraint(fields=('run', 'item'), name='regionconsensus_unique_run_item'),
        ),
        migrations.RunPython(_0008.create_sqlite_triggers, _0008.drop_sqlite_triggers),
    ]
