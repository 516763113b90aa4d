"""Gold: an explicit subset of expert-labelled items, never from the hold-out."""

from __future__ import annotations

import pytest

from labeling.models import Item
from labeling.services.gold import GoldError, draw_gold, set_gold
from tests.factories import ItemFactory, give_expert_answer

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def labelled(project, n: int, **kwargs) -> list[Item]:
    items = [ItemFactory(project=project, **kwargs) for _ in range(n)]
    for item in items:
        give_expert_answer(item, "normal")
    return items


def test_draw_gold_only_from_expert_labelled_items_outside_the_holdout(project):
    eligible = labelled(project, 10)
    held = labelled(project, 3)
    Item.objects.filter(pk__in=[i.pk for i in held]).update(is_holdout=True)
    [ItemFactory(project=project) for _ in range(4)]  # no expert answer
    drawn = draw_gold(project, fraction=0.5, seed=3)
    assert len(drawn) == 5
    assert set(drawn) <= {i.pk for i in eligible}
    assert set(Item.objects.filter(is_gold=True).values_list("id", flat=True)) == set(drawn)
    assert draw_gold(project, fraction=0.5, seed=4) == []
    assert len(draw_gold(project, count=7, seed=4)) == 2


def test_draw_gold_is_deterministic(project):
    labelled(project, 12)
    first = draw_gold(project, count=4, seed=11)
    Item.objects.update(is_gold=False)
    assert draw_gold(project, count=4, seed=11) == first


def test_draw_gold_arguments(project):
    with pytest.raises(GoldError):
        draw_gold(project)
    with pytest.raises(GoldError):
        draw_gold(project, fraction=0.5, count=3)
    with pytest.raises(GoldError):
        draw_gold(project, fraction=2.0)


def test_set_gold_refuses_holdout_and_unlabelled_items(project):
    good = labelled(project, 2)
    assert set_gold(good, True) == 2
    held = labelled(project, 1, is_holdout=True)
    with pytest.raises(GoldError, match="Hold-out"):
        set_gold(held, True)
    with pytest.raises(GoldError, match="expert answer"):
        set_gold([ItemFactory(project=project)], True)
    assert set_gold(good, False) == 2
    assert not Item.objects.filter(is_gold=True).exists()


def test_gold_api_is_for_admins(project, admin_client, expert_client):
    items = labelled(project, 4)
    url = f"/api/projects/{project.id}/gold/draw/"
    assert expert_client.post(url, {"count": 2}, format="json").status_code == 403
    assert admin_client.post(url, {}, format="json").status_code == 400
    response = admin_client.post(url, {"count": 2, "seed": 1}, format="json")
    assert response.status_code == 200 and response.json()["total"] == 2
    unset = admin_client.post(
        f"/api/projects/{project.id}/gold/", {"items": [items[0].pk], "is_gold": True}, format="json"
    )
    assert unset.status_code == 200
    held = labelled(project, 1, is_holdout=True)
    refused = admin_client.post(
        f"/api/projects/{project.id}/gold/", {"items": [held[0].pk], "is_gold": True}, format="json"
    )
    assert refused.status_code == 400 and "Hold-out" in refused.json()["detail"]
