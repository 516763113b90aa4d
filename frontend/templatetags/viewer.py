"""``{% window_presets %}``: the viewer's CT window presets, as JSON the viewer reads."""

from __future__ import annotations

from django import template
from django.utils.html import json_script

from labeling.imports.dicom import WINDOW_PRESETS

register = template.Library()

# Letter keys: digits are the answer keys. Abdomen is a viewer preset only (not an import one).
SHORTCUTS = {"lung": "l", "mediastinum": "m", "abdomen": "a", "soft_tissue": "t", "bone": "b",
             "brain": "c"}
ABDOMEN = (50.0, 400.0)


def window_presets() -> list[dict]:
    """Name, key, shortcut, centre and width (HU) of each preset, in the order of SHORTCUTS."""
    windows = {**WINDOW_PRESETS, "abdomen": ABDOMEN}
    return [
        {
            "key": key,
            "name": key.replace("_", " ").capitalize(),
            "shortcut": shortcut,
            "center": windows[key][0],
            "width": windows[key][1],
        }
        for key, shortcut in SHORTCUTS.items()
    ]


@register.simple_tag
def window_presets_script() -> str:
    return json_script(window_presets(), "window-presets")
