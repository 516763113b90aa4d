"""The labelling domain: projects and their classes, members and roles, items, leases, votes,
expert labels, and the stored results of every aggregation method.

State lives here; multi-step changes live in ``services.py``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, FloatField, Q, Sum, Value
from django.db.models.functions import Coalesce

# Items without a consensus yet rank below every entropy (entropy is >= 0). An expression
# rather than NULLS LAST, which SQLite cannot index; used by item_open_idx and the ordering.
UNCERTAINTY_RANK = Coalesce(F("uncertainty"), Value(-1.0), output_field=FloatField())


class Project(models.Model):
    class TaskType(models.TextChoices):
        IMAGE = "image", "Image classification"
        BAG = "bag", "Bag of patches (multiple-instance learning)"
        POINTS = "points", "Points on each object"
        BOXES = "boxes", "Boxes around each object"
        MASKS = "masks", "Masks (polygons or brush)"

    class WindowPreset(models.TextChoices):
        FROM_FILE = "file", "From the DICOM file (else min-max)"
        LUNG = "lung", "Lung (W 1500 / L -600)"
        MEDIASTINUM = "mediastinum", "Mediastinum (W 350 / L 50)"
        SOFT_TISSUE = "soft_tissue", "Soft tissue (W 400 / L 40)"
        BONE = "bone", "Bone (W 1800 / L 400)"
        BRAIN = "brain", "Brain (W 80 / L 40)"
        MINMAX = "minmax", "Full range (min-max)"

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    task_type = models.CharField(max_length=16, choices=TaskType.choices, default=TaskType.IMAGE)
    question = models.CharField(
        max_length=300, blank=True, help_text="The question crowd workers answer for each image."
    )
    overlap = models.PositiveSmallIntegerField(
        default=3, help_text="Votes wanted per item (k) before aggregation exists."
    )
    max_overlap = models.PositiveSmallIntegerField(
        default=7, help_text="Adaptive redundancy: an uncertain item may receive up to this many votes."
    )
    gold_rate = models.FloatField(default=0.1, help_text="Share of assignments that are gold items.")
    holdout_fraction = models.FloatField(
        default=0.1, help_text="Share of items drawn into the blind expert hold-out."
    )
    lease_minutes = models.PositiveIntegerField(default=10)
    confidence_threshold = models.FloatField(
        default=0.9,
        help_text="Items whose consensus posterior is below this go to expert review; "
        "items above it stop receiving votes.",
    )
    gold_min_answers = models.PositiveIntegerField(
        default=5, help_text="Gold answers a worker gives before they can be blocked."
    )
    gold_accuracy_threshold = models.FloatField(
        default=0.5, help_text="Workers whose gold accuracy falls below this are blocked."
    )
    aggregate_every = models.PositiveIntegerField(
        default=50, help_text="Re-aggregate automatically after this many new votes (0: never)."
    )
    # "auto" picks a method per project from its own votes (labeling.aggregation.selection)
    default_method = models.CharField(max_length=40, default="auto")
    window_preset = models.CharField(
        max_length=16, choices=WindowPreset.choices, default=WindowPreset.FROM_FILE
    )
    keep_original_files = models.BooleanField(
        default=False, help_text="Keep the de-identified original DICOM file next to the rendering."
    )
    expected_channels = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="1 (grayscale) or 3 (colour); empty accepts both."
    )
    patch_size = models.PositiveIntegerField(default=128, help_text="Bag projects: patch side in px.")
    patch_stride = models.PositiveIntegerField(default=128, help_text="Bag projects: stride in px.")
    # Region projects (points, boxes, masks): the match rule used by consensus, gold scoring,
    # agreement and the report, so that all four count the same thing as one object.
    region_match_distance = models.FloatField(
        default=10.0, help_text="Points: two marks within this many pixels are one object."
    )
    region_match_iou = models.FloatField(
        default=0.5, help_text="Boxes: two boxes overlapping at this IoU or more are one object."
    )
    max_regions = models.PositiveIntegerField(
        default=300, help_text="Region projects: the most regions one answer may hold."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(gold_rate__gte=0) & Q(gold_rate__lte=1), name="project_gold_rate_01"
            ),
            models.CheckConstraint(
                condition=Q(holdout_fraction__gte=0) & Q(holdout_fraction__lte=1),
                name="project_holdout_fraction_01",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_region_task(self) -> bool:
        return self.task_type in REGION_TASK_TYPES

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.label_classes.all()]

    def votes_since_aggregation(self) -> int:
        """Votes since the last aggregation: the sum of the project's tally stripes."""
        return self.vote_tallies.aggregate(n=Sum("votes"))["n"] or 0


REGION_TASK_TYPES = frozenset(
    {Project.TaskType.POINTS, Project.TaskType.BOXES, Project.TaskType.MASKS}
)

# Stripes of a project's vote tally: votes of different workers rarely wait on the same row.
TALLY_STRIPES = 16


class VoteTally(models.Model):
    """Votes since the project's last aggregation, one row per stripe (worker id % TALLY_STRIPES).

    The "aggregate every N votes" counter: one row per project would be a lock every vote of the
    project queues on until its commit (and a hot, bloating row). A vote adds to its worker's
    stripe, the count is the sum, and an aggregation subtracts from each stripe what it read.
    """

    # The stripe is created by a vote's upsert; CASCADE in the database as well as in Django.
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="vote_tallies", db_index=False
    )
    stripe = models.PositiveSmallIntegerField()
    votes = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "stripe"], name="votetally_unique_stripe"),
        ]


class DailyVoteCount(models.Model):
    """A worker's votes in a project since ``day_start`` (their progress line's "votes today").

    PostgreSQL only: triggers on the vote table keep ``votes`` for every writer, and a reader
    asking for another midnight counts once and moves the row there (migration 0009, where the
    locking is explained). Nothing in Python writes it; elsewhere the progress line counts.
    """

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="daily_vote_counts", db_index=False
    )
    worker = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    day_start = models.DateTimeField()
    votes = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "worker"], name="dailyvotecount_unique_worker"),
        ]


class LabelClass(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="label_classes")
    name = models.CharField(max_length=100)
    index = models.PositiveSmallIntegerField(help_text="Order on the page; key index+1 picks it.")
    description = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["project", "index"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="labelclass_unique_name"),
            models.UniqueConstraint(fields=["project", "index"], name="labelclass_unique_index"),
        ]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        CROWD = "crowd", "Crowd worker"
        EXPERT = "expert", "Expert"
        ADMIN = "admin", "Admin"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=8, choices=Role.choices)
    is_blocked = models.BooleanField(default=False)
    blocked_reason = models.CharField(max_length=300, blank=True)
    blocked_at = models.DateTimeField(null=True, blank=True)
    is_simulated = models.BooleanField(default=False, help_text="A simulated crowd worker.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="membership_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user} as {self.role} on {self.project}"


class ImportBatch(models.Model):
    class Source(models.TextChoices):
        COMMAND = "command", "Management command"
        UPLOAD = "upload", "Browser upload"
        API = "api", "REST API"
        DEMO = "demo", "Demo data"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="import_batches")
    source = models.CharField(max_length=10, choices=Source.choices)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    n_imported = models.PositiveIntegerField(default=0)
    n_duplicates = models.PositiveIntegerField(default=0)
    n_failed = models.PositiveIntegerField(default=0)
    n_labels = models.PositiveIntegerField(default=0)
    report = models.JSONField(default=list, help_text="One line per file: name, status, message.")

    class Meta:
        ordering = ["-created_at"]


def _item_upload_path(item: Item, filename: str) -> str:
    return f"items/{item.project_id}/{item.content_hash[:2]}/{filename}"


class Item(models.Model):
    """One unit a crowd votes on: an image, a DICOM frame, or (bag projects) a whole image."""

    # Indexed by item_unique_hash and item_assign_idx, which start with it. Every vote updates
    # vote_count (indexed, so a new entry in every index of the item): no index without a reader.
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="items", db_index=False
    )
    batch = models.ForeignKey(
        ImportBatch, null=True, blank=True, on_delete=models.SET_NULL, related_name="items"
    )
    content_hash = models.CharField(max_length=64, help_text="SHA-256 of the decoded pixels.")
    source_name = models.CharField(
        max_length=500, help_text="Original file name; never shown to crowd workers."
    )
    frame_index = models.PositiveIntegerField(default=0)
    image = models.FileField(upload_to=_item_upload_path, max_length=300)
    thumbnail = models.FileField(upload_to=_item_upload_path, max_length=300)
    array = models.FileField(
        upload_to=_item_upload_path,
        max_length=300,
        blank=True,
        help_text="Full-precision pixels (.npy) for training, e.g. DICOM after rescale.",
    )
    original = models.FileField(upload_to=_item_upload_path, max_length=300, blank=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    channels = models.PositiveSmallIntegerField(default=1)
    modality = models.CharField(max_length=16, blank=True)
    metadata = models.JSONField(default=dict, help_text="Technical metadata only; no PHI.")
    # Read within a project: item_assign_idx (hold-out), item_gold_idx (gold).
    is_holdout = models.BooleanField(default=False)
    is_gold = models.BooleanField(default=False)
    expert_answer = models.ForeignKey(
        LabelClass,
        null=True,
        blank=True,
        on_delete=models.RESTRICT,
        related_name="+",
        help_text="The final expert label (from import, hold-out or adjudication).",
    )
    expert_regions = models.ForeignKey(
        "RegionAnswer",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Region projects: the final expert set of regions (import, hold-out or review).",
    )
    # Maintained by services so that assignment can pick an item with one indexed query.
    vote_count = models.PositiveIntegerField(default=0)
    votes_wanted = models.PositiveSmallIntegerField(default=0)
    uncertainty = models.FloatField(
        null=True, blank=True, help_text="Entropy of the latest consensus posterior."
    )
    needs_review = models.BooleanField(default=False)  # item_review_idx
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "content_hash"], name="item_unique_hash"),
        ]
        indexes = [
            models.Index(fields=["project", "is_holdout", "vote_count"], name="item_assign_idx"),
            # Regular items that still want votes, in serving order: next_item walks it and
            # stops at the first free one; progress counts it (see services/assignment.py).
            models.Index(
                F("project"), F("vote_count"), UNCERTAINTY_RANK.desc(), F("id"),
                condition=Q(is_gold=False, vote_count__lt=F("votes_wanted")),
                name="item_open_idx",
            ),
            # Partial: the few gold items (the gold draw) and the review queue, which a regular
            # item's vote never writes to.
            models.Index(fields=["project"], condition=Q(is_gold=True), name="item_gold_idx"),
            models.Index(fields=["project"], condition=Q(needs_review=True), name="item_review_idx"),
        ]

    def __str__(self) -> str:
        return f"item {self.pk}"


class Assignment(models.Model):
    """A lease: one worker may vote on one item until ``expires_at``."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        SUBMITTED = "submitted", "Submitted"
        RELEASED = "released", "Released"

    # No database constraint: its check locks the project row (FOR KEY SHARE) from every
    # lease; Django still cascades. Read with the worker (lease_open_worker_idx), never alone.
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="assignments", db_index=False,
        db_constraint=False,
    )
    # Indexed by lease_item_worker_idx, which starts with item (one index less to keep up per lease).
    item = models.ForeignKey(
        Item, on_delete=models.CASCADE, related_name="assignments", db_index=False
    )
    worker = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)
    # Compared per item (lease_item_worker_idx) or per worker (lease_open_worker_idx): an index of
    # its own drew the live-lease count into scanning every lease of the last minutes.
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["item", "worker"],
                condition=Q(status="open"),
                name="assignment_one_open_lease_per_worker_item",
            ),
        ]
        indexes = [
            # An item's leases (a few: its live-lease count) and a worker's on it (the gold draw's
            # "never served", the vote's lease update): one index for both.
            models.Index(fields=["item", "worker"], name="lease_item_worker_idx"),
            # A worker's open leases (next_item reads them on every request): a handful of rows
            # instead of every lease the worker ever held.
            models.Index(
                fields=["worker", "project"], condition=Q(status="open"), name="lease_open_worker_idx"
            ),
        ]


class Vote(models.Model):
    class Kind(models.TextChoices):
        LABEL = "label", "Class label"
        REGIONS = "regions", "Regions (points, boxes or masks)"
        UNSURE = "unsure", "Unsure"
        SKIP = "skip", "Skip"

    class Source(models.TextChoices):
        WEB = "web", "Annotator page"
        API = "api", "API"
        SIMULATED = "simulated", "Simulated crowd"

    # project, item and worker are indexed by the composite indexes and unique constraints
    # below, which start with them; separate indexes would only slow every vote's insert.
    # No database constraint on project and label: each check locks the one row every vote of
    # the project shares (FOR KEY SHARE); Django still cascades and restricts.
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="votes", db_index=False, db_constraint=False
    )
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="votes", db_index=False)
    worker = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="votes", db_index=False
    )
    assignment = models.OneToOneField(
        Assignment, null=True, blank=True, on_delete=models.SET_NULL, related_name="vote"
    )
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.LABEL)
    label = models.ForeignKey(
        LabelClass, null=True, blank=True, on_delete=models.RESTRICT, related_name="votes",
        db_index=False, db_constraint=False,
    )
    regions = models.JSONField(
        null=True, blank=True,
        help_text='A region answer, possibly empty: [{"label": class index, "shape": "point" | '
        '"box" | "polygon" | "mask", "points": [[x, y], ...] or "rle": {...}}] in image pixels.',
    )
    idempotency_key = models.CharField(max_length=100)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.WEB)
    was_gold = models.BooleanField(default=False, help_text="The item was gold when voted on.")
    gold_correct = models.BooleanField(null=True, blank=True)
    is_excluded = models.BooleanField(
        default=False, help_text="The worker is blocked: kept, flagged, not aggregated."
    )
    # Read per worker (vote_worker_day_idx); an index of its own drew the planner into
    # scanning everyone's votes of the day, since statistics lag behind a rising timestamp.
    created_at = models.DateTimeField(auto_now_add=True)
    item_open = models.BooleanField(
        default=True,
        editable=False,
        help_text="The item still wants votes (not gold, vote_count < votes_wanted). Database "
        "triggers keep it (migration 0006), so a worker's progress line reads an index, not "
        "their whole history.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item", "worker"], name="vote_one_per_worker_item"),
            models.UniqueConstraint(
                fields=["worker", "idempotency_key"], name="vote_unique_idempotency_key"
            ),
            models.CheckConstraint(
                condition=(Q(kind="label") & Q(label__isnull=False))
                | (~Q(kind="label") & Q(label__isnull=True)),
                name="vote_label_iff_kind_label",
            ),
            models.CheckConstraint(
                condition=(Q(kind="regions") & Q(regions__isnull=False))
                | (~Q(kind="regions") & Q(regions__isnull=True)),
                name="vote_regions_iff_kind_regions",
            ),
        ]
        indexes = [
            # A worker's votes today (and all their votes: the prefix) ...
            models.Index(fields=["project", "worker", "created_at"], name="vote_worker_day_idx"),
            # ... and those on items still open: the two counts of the progress line.
            models.Index(
                fields=["project", "worker"], condition=Q(item_open=True), name="vote_worker_open_idx"
            ),
            # A worker's scored gold answers (every gold vote reads them): O(gold answers), not
            # a heap visit to every vote of theirs (9 ms at 6,000 votes).
            models.Index(
                fields=["project", "worker"],
                condition=Q(was_gold=True, gold_correct__isnull=False),
                name="vote_worker_gold_idx",
            ),
        ]

    @property
    def counts(self) -> bool:
        """Whether this vote counts toward an item's overlap and aggregation."""
        return self.kind in (self.Kind.LABEL, self.Kind.REGIONS) and not self.is_excluded


class ExpertLabel(models.Model):
    class Source(models.TextChoices):
        IMPORT = "import", "Imported with the images"
        HOLDOUT = "holdout", "Blind hold-out labelling"
        REVIEW = "review", "Adjudication of crowd disagreement"
        TIEBREAK = "tiebreak", "Hold-out disagreement resolved"

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="expert_labels")
    expert = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    label = models.ForeignKey(LabelClass, on_delete=models.RESTRICT, related_name="+")
    source = models.CharField(max_length=10, choices=Source.choices)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["item", "expert", "source"],
                condition=Q(expert__isnull=False),
                name="expertlabel_one_per_expert_source",
            ),
        ]


class RegionAnswer(models.Model):
    """One expert's (or an import's) whole set of regions for an item; an empty set is an answer
    ("nothing here"). The item's final one is ``Item.expert_regions``, as ``expert_answer`` is
    for a class."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="region_answers")
    expert = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    source = models.CharField(max_length=10, choices=ExpertLabel.Source.choices)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["item", "expert", "source"],
                condition=Q(expert__isnull=False),
                name="regionanswer_one_per_expert_source",
            ),
        ]


class Region(models.Model):
    """A point, box or polygon an expert marked on an item, in image pixel coordinates.

    Rows of a ``RegionAnswer`` are an expert's answer on a region project; rows without one are
    localisation truth imported beside class labels (BCCD's white cells, read by MIL reports).
    """

    class Shape(models.TextChoices):
        POINT = "point", "Point"
        BOX = "box", "Box"
        POLYGON = "polygon", "Polygon"
        MASK = "mask", "Mask (run-length encoded)"

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="regions")
    answer = models.ForeignKey(
        RegionAnswer, null=True, blank=True, on_delete=models.CASCADE, related_name="regions"
    )
    label = models.ForeignKey(
        LabelClass, null=True, blank=True, on_delete=models.RESTRICT, related_name="+"
    )
    name = models.CharField(max_length=100, blank=True, help_text="Free-text kind, e.g. WBC.")
    shape = models.CharField(max_length=8, choices=Shape.choices, default=Shape.BOX)
    # The bounding box of every shape (a point's is the point), so box and point code reads it.
    x0 = models.FloatField()
    y0 = models.FloatField()
    x1 = models.FloatField(help_text="Equal to x0 for a point.")
    y1 = models.FloatField(help_text="Equal to y0 for a point.")
    geometry = models.JSONField(
        default=dict, blank=True,
        help_text='Polygon: {"points": [[x, y], ...]}; mask: {"rle": {"size": [h, w], "counts": [...]}}.',
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    @property
    def is_point(self) -> bool:
        return self.x0 == self.x1 and self.y0 == self.y1


class AggregationRun(models.Model):
    """One aggregation of a project's votes with one method; runs are kept to compare methods."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="aggregation_runs")
    method = models.CharField(max_length=40)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    failure_reason = models.TextField(blank=True)
    trigger = models.CharField(max_length=20, default="manual")
    # an "auto" run's choice: chosen method, criterion, reason and every candidate's scores
    selection = models.JSONField(default=dict, blank=True)
    n_votes = models.PositiveIntegerField(default=0)
    n_items = models.PositiveIntegerField(default=0)
    n_workers = models.PositiveIntegerField(default=0)
    fleiss_kappa = models.FloatField(null=True, blank=True)
    krippendorff_alpha = models.FloatField(null=True, blank=True)
    holdout_accuracy = models.FloatField(null=True, blank=True)
    holdout_size = models.PositiveIntegerField(default=0)
    seconds = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    @property
    def fitted_method(self) -> str:
        """The method whose fit the run stored: an ``auto`` run's pick, else its own method."""
        return self.selection.get("chosen") or self.method


class ConsensusLabel(models.Model):
    run = models.ForeignKey(AggregationRun, on_delete=models.CASCADE, related_name="consensus")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="consensus_labels")
    label = models.ForeignKey(LabelClass, on_delete=models.RESTRICT, related_name="+")
    posterior = models.JSONField(help_text="Probability per class, in class index order.")
    confidence = models.FloatField()
    entropy = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "item"], name="consensus_unique_run_item"),
        ]


class RegionConsensus(models.Model):
    """A region run's fused answer for one item: consensus shapes, each with its confidence, and
    for masks the soft probability map (STAPLE's or the vote share) as a PNG beside it."""

    run = models.ForeignKey(AggregationRun, on_delete=models.CASCADE, related_name="region_consensus")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="region_consensus")
    regions = models.JSONField(
        default=list, help_text='[{"label": index, "shape": ..., "points" or "rle": ..., "confidence": p}]'
    )
    probability_map = models.FileField(upload_to="consensus/", max_length=300, blank=True)
    confidence = models.FloatField(help_text="How sure the consensus is, 0..1 (review below the project's threshold).")
    agreement = models.FloatField(null=True, blank=True, help_text="Mean pairwise F1 (points, boxes) or Dice (masks).")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "item"], name="regionconsensus_unique_run_item"),
        ]


class WorkerReliability(models.Model):
    run = models.ForeignKey(AggregationRun, on_delete=models.CASCADE, related_name="reliabilities")
    worker = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    n_votes = models.PositiveIntegerField()
    accuracy = models.FloatField(help_text="Estimated probability of a correct vote.")
    confusion = models.JSONField(help_text="Row = true class, column = vote; rows sum to 1.")
    detail = models.JSONField(
        default=dict, blank=True,
        help_text="Region runs: sensitivity, precision (points, boxes) or specificity (masks).",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "worker"], name="reliability_unique_run_worker"),
        ]
