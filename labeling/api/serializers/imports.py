from __future__ import annotations

from rest_framework import serializers

from labeling.models import ImportBatch


class ImportReportLineSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="The file as uploaded (admins only).")
    status = serializers.ChoiceField(choices=["imported", "duplicate", "failed"])
    message = serializers.CharField(allow_blank=True)
    item_ids = serializers.ListField(child=serializers.IntegerField())


class ImportBatchSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)
    report = ImportReportLineSerializer(many=True, read_only=True)

    class Meta:
        model = ImportBatch
        fields = [
            "id", "project", "source", "created_by", "created_at",
            "n_imported", "n_duplicates", "n_failed", "n_labels", "report",
        ]
        read_only_fields = fields


class ImportUploadSerializer(serializers.Serializer):
    """The multipart request of an import."""

    files = serializers.ListField(
        child=serializers.FileField(allow_empty_file=True, use_url=False),
        min_length=1,
        help_text="Images: PNG, JPEG, TIFF, DICOM, or .zip archives of them. Repeat the field.",
    )
    labels = serializers.FileField(
        required=False,
        allow_empty_file=True,
        use_url=False,
        help_text="Optional CSV of known expert labels: filename,label (header optional).",
    )
    coco = serializers.FileField(
        required=False,
        allow_empty_file=True,
        use_url=False,
        help_text="Region projects: a COCO JSON file of expert regions for the images (boxes, "
        "polygons, RLE masks); it may also travel as the one .json file in the upload. The "
        "import is then all or nothing.",
    )
    coco_as = serializers.ChoiceField(
        choices=["expert", "votes"],
        default="expert",
        help_text="What the COCO regions become: the items' expert answers, or the crowd votes "
        "of the annotators the file names (each annotation's 'annotator'; each image's "
        "'annotators' lists who answered it, so an empty answer is kept).",
    )
    stack = serializers.BooleanField(
        required=False,
        default=False,
        help_text="A multi-frame DICOM file becomes one item read slice by slice "
        "(default: one item per frame).",
    )
