"""Aggregation runs, their consensus labels and the workers' estimated reliability."""

from __future__ import annotations

from rest_framework import serializers

from labeling.models import AggregationRun, ConsensusLabel, WorkerReliability
from labeling.services.aggregation import InvalidAggregation, check_method, method_names


class AggregationRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = AggregationRun
        fields = [
            "id",
            "project",
            "method",
            "params",
            "selection",
            "status",
            "failure_reason",
            "trigger",
            "n_votes",
            "n_items",
            "n_workers",
            "fleiss_kappa",
            "krippendorff_alpha",
            "holdout_accuracy",
            "holdout_size",
            "seconds",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields


class AggregationRequestSerializer(serializers.Serializer):
    method = serializers.CharField(
        max_length=40, help_text=f"One of: {', '.join(method_names())}."
    )
    params = serializers.DictField(
        required=False, default=dict, help_text="Constructor arguments of the method, e.g. n_iter."
    )

    def validate(self, attrs: dict) -> dict:
        try:
            # the project's own methods are checked when the run is requested
            check_method(attrs["method"], attrs.get("params"))
        except InvalidAggregation as exc:
            field = "method" if attrs["method"] not in method_names() else "params"
            raise serializers.ValidationError({field: exc.message}) from exc
        return attrs


class ConsensusLabelSerializer(serializers.ModelSerializer):
    label = serializers.CharField(source="label.name", read_only=True)
    posterior = serializers.ListField(
        child=serializers.FloatField(), read_only=True, help_text="Probability per class, in class order."
    )

    class Meta:
        model = ConsensusLabel
        fields = ["item", "label", "posterior", "confidence", "entropy"]


class WorkerReliabilitySerializer(serializers.ModelSerializer):
    worker = serializers.CharField(source="worker.username", read_only=True)
    confusion = serializers.ListField(
        child=serializers.ListField(child=serializers.FloatField()),
        read_only=True,
        help_text="Row = true class, column = the worker's vote, in class order.",
    )

    class Meta:
        model = WorkerReliability
        fields = ["worker", "n_votes", "accuracy", "confusion"]
