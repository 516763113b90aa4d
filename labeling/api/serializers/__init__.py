"""Serializers, one module per area, beside the views of the same name."""
