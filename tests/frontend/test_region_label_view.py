"""The label page as served for a region project: the drawing panel and its configuration, no
class answer buttons, nothing about the answer (issue 17). The drawing itself is tested in the
browser (test_region_label_page.py)."""

from __future__ import annotations

import json
import re

from django.test import Client

from labeling.models import Membership, Project
from tests.factories import MembershipFactory, ProjectFactory, UserFactory


def test_region_page_carries_the_canvas_configuration_and_no_class_answers(db):
    project = ProjectFactory(
        name="Cells", classes=["WBC", "RBC"], task_type=Project.TaskType.MASKS, max_regions=42
    )
    user = UserFactory(username="drawer")
    MembershipFactory(project=project, user=user, role=Membership.Role.CROWD)
    client = Client()
    client.force_login(user)
    html = client.get(f"/label/{project.id}/").content.decode()
    config = json.loads(re.search(r'id="region-config"[^>]*>(.*?)</script>', html).group(1))
    assert config == {"task_type": "masks", "classes": ["WBC", "RBC"], "max_regions": 42}
    assert 'data-task-type="masks"' in html and 'data-testid="region-panel"' in html
    assert 'data-testid="nothing-here"' in html and 'data-testid="submit-regions"' in html
    assert 'data-testid="answers"' not in html and "data-label=" not in html


def test_class_page_is_unchanged(project, crowd_page):
    html = crowd_page.get(f"/label/{project.id}/").content.decode()
    assert 'data-testid="answers"' in html and 'data-label="pneumonia"' in html
    assert "region-config" not in html and "data-task-type" not in html
