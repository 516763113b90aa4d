"""Project admins label too (issue 18): the label page, next and vote, on every path the crowd
takes (token through the crowd lane, session through DRF; database functions on PostgreSQL,
Python services elsewhere). Experts still label on the review pages only."""

from __future__ import annotations

from labeling.models import Vote
from tests.factories import ItemFactory
from tests.labeling.test_crowd_api import next_of, vote


def test_admin_gets_a_lease_and_votes(admin_client, admin_user, expert_client, project):
    ItemFactory.create_batch(2, project=project)
    lease = next_of(admin_client, project)
    assert lease.status_code == 200, lease.content
    answer = vote(admin_client, lease.json()["id"], label="pneumonia", idempotency_key="a1")
    assert answer.status_code == 201, answer.content
    recorded = Vote.objects.get(worker=admin_user)
    assert recorded.label.name == "pneumonia" and recorded.project_id == project.id
    assert next_of(expert_client, project).status_code == 403


def test_admin_votes_with_a_session_as_the_label_page_does(admin_user, project):
    from rest_framework.test import APIClient

    ItemFactory(project=project)
    client = APIClient()
    client.force_login(admin_user)
    lease = next_of(client, project).json()
    answer = vote(client, lease["id"], label="normal", idempotency_key="s1")
    assert answer.status_code == 201, answer.content


def test_label_page_opens_for_admins_not_experts(admin_page, expert_page, project):
    assert admin_page.get(f"/label/{project.id}/").status_code == 200
    assert expert_page.get(f"/label/{project.id}/").status_code == 403
