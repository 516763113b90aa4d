"""drf-spectacular hooks that make the served schema say what the URLconf enforces."""

from __future__ import annotations


def integer_path_ids_are_non_negative(result: dict, generator, request, public) -> dict:
    """Django's ``<int:...>`` converter matches digits only: a negative id never reaches a view.

    Saying so in the schema keeps clients (and schemathesis) from expecting a JSON answer for a
    URL that the resolver itself refuses.
    """
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter["schema"].get("type") == "integer":
                    parameter["schema"].setdefault("minimum", 0)
    return result
