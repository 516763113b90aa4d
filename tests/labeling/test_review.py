"""Blind hold-out, expert agreement and tie-break, adjudication queue and its evidence."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from labeling.exports import worker_pseudonym
from labeling.models import (
    AggregationRun,
    ConsensusLabel,
    ExpertLabel,
    Item,
    Membership,
    Project,
    Vote,
    WorkerReliability,
)
from labeling.services import review
from tests.factories import ItemFactory, MembershipFactory, UserFactory, label_of
from training.models import Prediction, TrainingRun

pytestmark = pytest.mark.django_db


@dataclass
class Scene:
    """A project mid-way: votes, two aggregation runs, a trained model, a hold-out."""

    project: Project
    workers: list
    regular: list[Item]
    holdout: list[Item]
    disputed: list[Item] = field(default_factory=list)
    runs: dict[str, AggregationRun] = field(default_factory=dict)
    model: TrainingRun | None = None


def add_vote(item: Item, worker, name: str, *, gold: bool | None = None) -> Vote:
    vote = Vote.objects.create(
        project=item.project,
        item=item,
        worker=worker,
        label=label_of(item.project, name),
        idempotency_key=f"{item.pk}-{worker.pk}",
        was_gold=gold is not None,
        gold_correct=gold,
    )
    Item.objects.filter(pk=item.pk).update(vote_count=item.votes.count())
    return vote


def build_scene(
    project: Project, *, n_regular: int = 6, n_holdout: int = 4, n_disputed: int = 2,
    make_item=None,
) -> Scene:
    """Three crowd workers vote on every item; the first ``n_disputed`` split 2:1 and need
    review. ``make_item(project, n)`` makes an item (default: a tiny factory image)."""
    make_item = make_item or (lambda p, n, **kw: ItemFactory(project=p, **kw))
    workers = []
    for i in range(3):
        user = UserFactory(username=f"scene-worker{i}")
        MembershipFactory(project=project, user=user, role=Membership.Role.CROWD)
        workers.append(user)
    regular = [make_item(project, n) for n in range(n_regular)]
    holdout = [make_item(project, n_regular + n) for n in range(n_holdout)]
    Item.objects.filter(pk__in=[i.pk for i in holdout]).update(is_holdout=True)
    for item in holdout:
        item.is_holdout = True
    scene = Scene(project=project, workers=workers, regular=regular, holdout=holdout)
    names = ["normal", "pneumonia"]
    for i, item in enumerate(regular + holdout):
        truth = names[i % 2]
        other = names[(i + 1) % 2]
        answers = [truth, truth, other] if i < n_disputed else [truth, truth, truth]
        for worker, answer in zip(workers, answers, strict=True):
            add_vote(item, worker, answer, gold=(answer == truth) if i == 5 else None)
    for i, item in enumerate(regular[:n_disputed]):
        Item.objects.filter(pk=item.pk).update(needs_review=True, uncertainty=0.5 + 0.3 * i)
        scene.disputed.append(item)
    for i, item in enumerate(holdout):
        Item.objects.filter(pk=item.pk).update(expert_answer=label_of(project, names[i % 2]))
    classes = list(project.label_classes.all())
    for method, kappa in (("majority_vote", 0.41), ("dawid_skene", 0.55)):
        for step in range(2):
            run = AggregationRun.objects.create(
                project=project,
                method=method,
                status=AggregationRun.Status.SUCCEEDED,
                fleiss_kappa=kappa + 0.1 * step,
                krippendorff_alpha=kappa + 0.1 * step + 0.01,
                n_votes=30,
            )
        scene.runs[method] = run
        for i, item in enumerate(regular + holdout):
            # Majority vote gets the last hold-out item wrong; Dawid-Skene gets all right.
            wrong = method == "majority_vote" and item == holdout[-1]
            k = (i + int(wrong)) % 2
            confidence = 0.66 if i < n_disputed else 0.95
            posterior = [confidence, 1 - confidence] if k == 0 else [1 - confidence, confidence]
            ConsensusLabel.objects.create(
                run=run, item=item, label=classes[k], posterior=posterior,
                confidence=confidence, entropy=0.3,
            )
        for j, worker in enumerate(workers):
            WorkerReliability.objects.create(
                run=run, worker=worker, n_votes=10, accuracy=0.9 - 0.2 * j,
                confusion=[[0.9 - 0.2 * j, 0.1 + 0.2 * j], [0.2, 0.8]],
            )
    model = TrainingRun.objects.create(
        project=project, status=TrainingRun.Status.SUCCEEDED, label_source="dawid_skene"
    )
    for item in regular + holdout:
        Prediction.objects.create(
            run=model, item=item, label=classes[1], probabilities=[0.123, 0.877]
        )
    scene.model = model
    return scene


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def scene(project) -> Scene:
    return build_scene(project)


def expert(project: Project, username: str):
    user = UserFactory(username=username)
    MembershipFactory(project=project, user=user, role=Membership.Role.EXPERT)
    return user


# -- hold-out draw ----------------------------------------------------------------------------


def test_draw_holdout_prefers_unvoted_items_and_skips_gold(project):
    voted = [ItemFactory(project=project, vote_count=2) for _ in range(5)]
    fresh = [ItemFactory(project=project) for _ in range(3)]
    gold = [ItemFactory(project=project, is_gold=True) for _ in range(2)]
    drawn = review.draw_holdout(project, 0.4, seed=1)
    assert len(drawn) == 4
    assert {i.pk for i in fresh} <= set(drawn)
    assert not set(drawn) & {i.pk for i in gold}
    assert Item.objects.filter(is_holdout=True).count() == 4
    # Drawing again to the same fraction adds nothing; a larger one tops it up.
    assert review.draw_holdout(project, 0.4, seed=2) == []
    assert len(review.draw_holdout(project, 0.5, seed=2)) == 1
    assert voted  # the rest came from voted items


def test_draw_holdout_is_deterministic_per_seed(project, other_project):
    for p in (project, other_project):
        for _ in range(20):
            ItemFactory(project=p)
    first = review.draw_holdout(project, 0.25, seed=7)
    second = review.draw_holdout(other_project, 0.25, seed=7)
    offset = min(i.pk for i in other_project.items.all()) - min(i.pk for i in project.items.all())
    assert [i + offset for i in first] == second


def test_draw_holdout_refuses_a_bad_fraction(project):
    with pytest.raises(review.ReviewError):
        review.draw_holdout(project, 1.5)


# -- blind labelling, agreement, tie-break ----------------------------------------------------


def test_two_agreeing_experts_set_the_answer(project, expert_user):
    item = ItemFactory(project=project, is_holdout=True)
    second = expert(project, "expert2")
    assert review.label_holdout(item, expert_user, "pneumonia") == "labelled"
    item.refresh_from_db()
    assert item.expert_answer.name == "pneumonia"
    assert review.next_holdout_item(project, expert_user) is None
    assert review.next_holdout_item(project, second) == item
    assert review.label_holdout(item, second, "2") == "agreed"
    item.refresh_from_db()
    assert item.expert_answer.name == "pneumonia"
    assert review.next_holdout_item(project, second) is None


def test_disagreement_goes_to_a_third_expert(project, expert_user, admin_user):
    item = ItemFactory(project=project, is_holdout=True)
    second, third = expert(project, "expert2"), expert(project, "expert3")
    review.label_holdout(item, expert_user, "normal")
    assert review.label_holdout(item, second, "pneumonia") == "disputed"
    item.refresh_from_db()
    assert item.expert_answer is None
    assert list(review.holdout_disputes(project, third)) == [item]
    assert list(review.holdout_disputes(project, expert_user)) == []
    assert list(review.holdout_disputes(project, admin_user)) == [item]
    with pytest.raises(review.ReviewConflict):
        review.break_tie(item, expert_user, "normal")
    with pytest.raises(review.ReviewConflict):
        review.label_holdout(item, third, "normal")  # two blind labels are enough
    with pytest.raises(review.ReviewConflict):
        review.label_holdout(item, second, "normal")  # no changing one's mind after a dispute
    review.break_tie(item, third, "pneumonia", note="consolidation in the left lower lobe")
    item.refresh_from_db()
    assert item.expert_answer.name == "pneumonia"
    assert review.holdout_state(item) == "resolved"
    assert not review.holdout_disputes(project).exists()
    tiebreak = ExpertLabel.objects.get(item=item, source=ExpertLabel.Source.TIEBREAK)
    assert tiebreak.expert == third and tiebreak.note.startswith("consolidation")


def test_cohen_kappa_over_items_both_experts_labelled(project, expert_user, admin_user, client):
    second = expert(project, "expert2")
    first_says = ["normal", "normal", "pneumonia", "pneumonia", "normal", "pneumonia"]
    second_says = ["normal", "pneumonia", "pneumonia", "pneumonia", "normal", "normal"]
    for a, b in zip(first_says, second_says, strict=True):
        item = ItemFactory(project=project, is_holdout=True)
        review.label_holdout(item, expert_user, a)
        review.label_holdout(item, second, b)
    ItemFactory(project=project, is_holdout=True)  # labelled by nobody: not in the pairs
    from sklearn.metrics import cohen_kappa_score

    agreement = review.holdout_agreement(project)
    assert agreement.n_items == 6
    assert agreement.observed == pytest.approx(4 / 6)
    assert agreement.kappa == pytest.approx(cohen_kappa_score(first_says, second_says))
    client.force_login(admin_user)
    html = client.get(f"/projects/{project.pk}/").content.decode()  # the dashboard says it
    line = html[html.index('data-testid="expert-agreement"') :].split("</p>")[0]
    assert f"{agreement.kappa:.2f}" in line and "over 6 doubly labelled items" in line


def test_holdout_refuses_regular_items_and_unknown_classes(project, expert_user):
    regular = ItemFactory(project=project)
    with pytest.raises(review.ReviewError):
        review.label_holdout(regular, expert_user, "normal")
    item = ItemFactory(project=project, is_holdout=True)
    with pytest.raises(review.ReviewError, match="Unknown class 'tumour'"):
        review.label_holdout(item, expert_user, "tumour")


def test_holdout_api_flow(project, expert_client, expert_user):
    item = ItemFactory(project=project, is_holdout=True)
    body = expert_client.get(f"/api/projects/{project.id}/holdout/next/").json()
    assert body["item"]["id"] == item.id and body["remaining"] == 1
    assert [c["name"] for c in body["classes"]] == ["normal", "pneumonia"]
    bad = expert_client.post(f"/api/holdout/{item.id}/label/", {"label": "tumour"}, format="json")
    assert bad.status_code == 400 and "Unknown class" in bad.json()["detail"]
    ok = expert_client.post(f"/api/holdout/{item.id}/label/", {"label": "normal"}, format="json")
    assert ok.status_code == 200
    assert ok.json() == {"item": item.id, "label": "normal", "state": "labelled"}
    assert expert_client.get(f"/api/projects/{project.id}/holdout/next/").json()["item"] is None
    regular = ItemFactory(project=project)
    assert expert_client.post(
        f"/api/holdout/{regular.id}/label/", {"label": "normal"}, format="json"
    ).status_code == 404
    agreement = expert_client.get(f"/api/projects/{project.id}/holdout/agreement/").json()
    assert agreement == {"n_items": 0, "observed": None, "cohen_kappa": None, "disputed": 0}


def test_tiebreak_api(project, expert_user, admin_client):
    item = ItemFactory(project=project, is_holdout=True)
    review.label_holdout(item, expert_user, "normal")
    review.label_holdout(item, expert(project, "expert2"), "pneumonia")
    disputes = admin_client.get(f"/api/projects/{project.id}/holdout/disputes/").json()
    assert [d["item"]["id"] for d in disputes["results"]] == [item.id]
    assert sorted(x["label"] for x in disputes["results"][0]["labels"]) == ["normal", "pneumonia"]
    response = admin_client.post(
        f"/api/holdout/{item.id}/tiebreak/", {"label": "pneumonia", "note": "clear"}, format="json"
    )
    assert response.status_code == 200, response.content
    again = admin_client.post(f"/api/holdout/{item.id}/tiebreak/", {"label": "normal"}, format="json")
    assert again.status_code == 409


def test_blind_holdout_carries_no_crowd_consensus_or_prediction(scene, expert_client, expert_page):
    """Votes, consensus and a prediction exist for the hold-out items; none of them leaks."""
    project = scene.project
    api = expert_client.get(f"/api/projects/{project.id}/holdout/next/")
    page = expert_page.get(f"/holdout/{project.id}/")
    assert api.status_code == page.status_code == 200
    shown = api.json()["item"]["id"]
    assert shown in {i.pk for i in scene.holdout}
    api_text, page_text = api.content.decode(), page.content.decode()
    assert set(api.json()) == {"item", "classes", "remaining"}
    assert set(api.json()["item"]) == {"id", "width", "height", "channels", "image_url", "thumbnail_url"}
    for text in (api_text, page_text):
        for forbidden in ("vote", "consensus", "posterior", "confidence", "prediction",
                          "probabilit", "reliability", "0.877", "0.95", "0.66", "scene-worker",
                          "majority_vote", "dawid_skene", "secret-source", "needs_review"):
            assert forbidden not in text.lower(), forbidden
    assert f'data-src="/api/items/{shown}/image/"' in page_text


def test_holdout_page_labels_by_form_post(scene, expert_page, expert_user):
    project = scene.project
    item = review.next_holdout_item(project, expert_user)
    response = expert_page.post(
        f"/holdout/{project.id}/", {"item": item.pk, "label": "pneumonia"}, follow=True
    )
    assert response.status_code == 200
    assert b"Saved your label" in response.content
    assert ExpertLabel.objects.get(item=item, expert=expert_user).label.name == "pneumonia"
    missing = expert_page.post(f"/holdout/{project.id}/", {"item": scene.regular[0].pk, "label": "normal"})
    assert missing.status_code == 404


# -- adjudication -----------------------------------------------------------------------------


def test_queue_is_most_uncertain_first_and_excludes_holdout(scene):
    project = scene.project
    high_votes = ItemFactory(project=project, needs_review=True, uncertainty=0.5, vote_count=9)
    ItemFactory(project=project, needs_review=True, uncertainty=0.99, is_holdout=True)
    unknown = ItemFactory(project=project, needs_review=True, uncertainty=None)
    queue = list(review.review_queue(project))
    assert queue == [scene.disputed[1], high_votes, scene.disputed[0], unknown]


def test_adjudication_is_final_and_leaves_the_queue(scene, expert_user):
    project = scene.project
    item = scene.disputed[1]
    label = review.adjudicate(item, expert_user, "normal", note="artefact")
    item.refresh_from_db()
    assert item.expert_answer.name == "normal" and not item.needs_review
    assert label.source == ExpertLabel.Source.REVIEW and label.note == "artefact"
    assert item not in review.review_queue(project)
    with pytest.raises(review.ReviewError):
        review.adjudicate(scene.holdout[0], expert_user, "normal")


def test_review_api_evidence_and_label(scene, expert_client):
    project = scene.project
    queue = expert_client.get(f"/api/projects/{project.id}/review/queue/").json()
    assert [r["id"] for r in queue["results"]] == [scene.disputed[1].pk, scene.disputed[0].pk]
    item = scene.disputed[1]
    evidence = expert_client.get(f"/api/review/{item.pk}/").json()
    assert evidence["vote_counts"] == [{"label": "normal", "count": 1}, {"label": "pneumonia", "count": 2}]
    assert [v["reliability"] for v in evidence["voters"]] == pytest.approx([0.9, 0.7, 0.5])
    assert [v["worker"] for v in evidence["voters"]] == [
        worker_pseudonym(project.id, w.pk) for w in scene.workers
    ]
    assert evidence["reliability_method"] == "dawid_skene"
    assert [c["method"] for c in evidence["consensus"]] == ["dawid_skene", "majority_vote"]
    assert all(c["run"] == scene.runs[c["method"]].pk for c in evidence["consensus"])
    assert evidence["prediction"]["label"] == "pneumonia"
    assert evidence["prediction"]["run"] == scene.model.pk
    assert "source_name" not in str(evidence) and "secret-source" not in str(evidence)
    bad = expert_client.post(f"/api/review/{item.pk}/label/", {"label": "tumour"}, format="json")
    assert bad.status_code == 400 and "Unknown class" in bad.json()["detail"]
    assert expert_client.post(f"/api/review/{item.pk}/label/", {}, format="json").status_code == 400
    done = expert_client.post(
        f"/api/review/{item.pk}/label/", {"label": "pneumonia", "note": "n"}, format="json"
    )
    assert done.status_code == 200
    assert done.json() == {"item": item.pk, "label": "pneumonia", "note": "n", "next": scene.disputed[0].pk}
    assert expert_client.get("/api/review/999999/").status_code == 404
    assert expert_client.get(f"/api/review/{scene.holdout[0].pk}/").status_code == 404


def test_evidence_without_runs_or_model(project, expert_client):
    item = ItemFactory(project=project, needs_review=True)
    body = expert_client.get(f"/api/review/{item.pk}/").json()
    assert body["consensus"] == [] and body["prediction"] is None and body["voters"] == []


# -- dashboard --------------------------------------------------------------------------------


def test_wilson_interval_matches_the_textbook():
    from labeling.reports import wilson_interval

    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0


def test_dashboard_json(scene, admin_client, expert_client):
    project = scene.project
    url = f"/api/projects/{project.id}/dashboard/"
    assert expert_client.get(url).status_code == 403
    body = admin_client.get(url).json()
    progress = body["progress"]
    assert progress["items"] == 10 and progress["votes"] == 30
    assert progress["votes_per_item"] == [{"votes": 3, "items": 10}]
    assert progress["awaiting_review"] == 2
    assert (progress["holdout_labelled"], progress["holdout_total"]) == (4, 4)
    assert [p["fleiss_kappa"] for p in body["agreement"]] == pytest.approx([0.41, 0.51, 0.55, 0.65])
    methods = {m["method"]: m for m in body["methods"]}
    assert methods["dawid_skene"]["accuracy"] == 1.0 and methods["dawid_skene"]["n"] == 4
    assert methods["majority_vote"]["accuracy"] == 0.75
    assert methods["majority_vote"]["ci_low"] < 0.75 < methods["majority_vote"]["ci_high"]
    assert methods["majority_vote"]["recall"] == {"normal": 1.0, "pneumonia": 0.5}
    assert methods["dawid_skene"]["calibration"] == [
        {"low": 0.9, "high": 1.0, "n": 4, "confidence": 0.95, "accuracy": 1.0}
    ]
    workers = {a["username"]: a for a in body["annotators"]}
    assert workers["scene-worker0"]["estimated_accuracy"] == pytest.approx(0.9)
    assert [workers[f"scene-worker{i}"]["gold_accuracy"] for i in range(3)] == [1.0, 1.0, 1.0]
    assert workers["scene-worker0"]["gold_answered"] == 1
    assert workers["scene-worker1"]["confusion"][0] == pytest.approx([0.7, 0.3])
