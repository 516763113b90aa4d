"""Region exports: the consensus and the expert regions as COCO, the consensus masks as PNGs in a
streamed zip, each annotator's raw regions under a pseudonym; admins only."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.http import StreamingHttpResponse
from PIL import Image

from labeling.aggregation.regions.answers import rle_decode, rle_encode
from labeling.exports import worker_pseudonym
from labeling.imports.coco import parse_coco
from labeling.models import AggregationRun, Item, Membership, Project, RegionConsensus, Vote
from labeling.services.imports import import_files
from tests.factories import MembershipFactory, UserFactory
from tests.labeling.test_coco import H, W, as_region_project, coco_file, images_zip, square_mask

pytestmark = pytest.mark.django_db


def body(response) -> bytes:
    assert response.status_code == 200, getattr(response, "content", b"")[:300]
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(response.streaming_content)


def url(project: Project, name: str) -> str:
    return f"/api/projects/{project.id}/exports/{name}"


def mask_shape(label: int, mask: np.ndarray, **extra) -> dict:
    return {"label": label, "shape": "mask", "rle": rle_encode(mask), **extra}


@pytest.fixture
def scene(project):
    """Two imported items with expert regions, two crowd workers' region votes (one blocked
    worker's vote excluded) and two STAPLE runs and a majority-vote run."""
    project = as_region_project(project)
    import_files(project, [("set.zip", images_zip())], coco=json.dumps(coco_file()).encode())
    a, b = Item.objects.order_by("source_name")  # set.zip/b.png, set.zip/smear/a.png
    workers = []
    for n in range(3):
        user = UserFactory(username=f"region-worker{n}")
        MembershipFactory(project=project, user=user, role=Membership.Role.CROWD)
        workers.append(user)
    votes = {
        (0, a): [mask_shape(0, square_mask(2, 2, 6, 6))],
        (1, a): [mask_shape(0, square_mask(3, 2, 6, 7)),
                 {"label": 1, "shape": "polygon", "points": [[10.0, 1.0], [14.0, 1.0], [14.0, 5.0]]}],
        (0, b): [],
        (2, b): [mask_shape(1, square_mask(0, 0, 4, 4))],
    }
    for (w, item), regions in votes.items():
        Vote.objects.create(project=project, item=item, worker=workers[w], kind=Vote.Kind.REGIONS,
                            regions=regions, idempotency_key=f"k{w}-{item.pk}",
                            is_excluded=(w == 2))
    runs = {}
    for method in ("staple", "staple", "mask_majority"):
        run = AggregationRun.objects.create(project=project, method=method,
                                            status=AggregationRun.Status.SUCCEEDED)
        runs[method] = run
    soft = np.zeros((2, H, W), dtype=np.float16)
    soft[0, 2:7, 2:6] = 0.75
    soft[0, 3:6, 3:5] = 1.0
    consensus = RegionConsensus(
        run=runs["staple"], item=a, confidence=0.8, agreement=0.7,
        regions=[mask_shape(0, soft[0] >= 0.5, confidence=0.9)],
    )
    buffer = io.BytesIO()
    np.save(buffer, soft)
    consensus.probability_map.save("p.npy", ContentFile(buffer.getvalue()), save=False)
    consensus.save()
    RegionConsensus.objects.create(run=runs["staple"], item=b, regions=[], confidence=1.0)
    RegionConsensus.objects.create(run=runs["mask_majority"], item=a, confidence=0.5,
                                   regions=[mask_shape(1, square_mask(0, 0, 2, 2), confidence=0.5)])
    # a newer run with no consensus written (still to fill, or another kind) is not "the latest"
    AggregationRun.objects.create(project=project, method="staple", status=AggregationRun.Status.FAILED)
    return {"project": project, "a": a, "b": b, "workers": workers, "votes": votes, "runs": runs,
            "soft": soft}


def test_consensus_coco_is_the_latest_region_run_with_scores(scene, admin_client):
    project, a = scene["project"], scene["a"]
    response = admin_client.get(url(project, "consensus.coco.json"))
    assert response["Content-Type"].startswith("application/json")
    assert "attachment" in response["Content-Disposition"] and "mask_majority" in response["Content-Disposition"]
    doc = json.loads(body(response))
    # the newest run with a consensus is the majority vote
    assert [ann["score"] for ann in doc["annotations"]] == [0.5]
    doc = json.loads(body(admin_client.get(url(project, "consensus.coco.json?method=staple"))))
    assert {img["id"] for img in doc["images"]} == {a.pk, scene["b"].pk}
    assert [c["name"] for c in doc["categories"]] == ["WBC", "RBC"]
    (ann,) = doc["annotations"]
    assert ann["image_id"] == a.pk and ann["score"] == 0.9 and ann["category_id"] == 1
    parsed = parse_coco(doc, "masks")
    mask = rle_decode(parsed.images[[i.id for i in parsed.images].index(a.pk)].regions[0]["rle"])
    assert (mask == (scene["soft"][0] >= 0.5)).all()
    assert ann["area"] == int(mask.sum()) and ann["bbox"] == [2, 2, 4, 5]
    for leaked in ("set.zip", "smear", "region-worker"):
        assert leaked not in json.dumps(doc)
    missing = admin_client.get(url(project, "consensus.coco.json?method=box_consensus"))
    assert missing.status_code == 404 and "box_consensus" in missing.json()["detail"]


def test_consensus_masks_as_pngs_in_a_streamed_zip(scene, admin_client):
    project, a = scene["project"], scene["a"]
    response = admin_client.get(url(project, "consensus_masks.zip?method=staple"))
    assert response["Content-Type"] == "application/zip"
    chunks = list(response.streaming_content)
    assert len(chunks) >= 2  # a chunk per mask, then the index: not one buffered body
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert sorted(archive.namelist()) == sorted(
        [f"item-{a.pk}/wbc.png", f"item-{a.pk}/wbc-p.png", "masks.csv"])
    png = np.asarray(Image.open(io.BytesIO(archive.read(f"item-{a.pk}/wbc.png"))))
    assert png.shape == (H, W) and set(np.unique(png)) == {0, 255}
    assert ((png == 255) == (scene["soft"][0] >= 0.5)).all()
    soft = np.asarray(Image.open(io.BytesIO(archive.read(f"item-{a.pk}/wbc-p.png"))))
    assert (soft == np.round(scene["soft"][0].astype(np.float32) * 255)).all()
    index = archive.read("masks.csv").decode().splitlines()
    assert index == ["task,class,mask,probability,confidence",
                     f"{a.pk},WBC,item-{a.pk}/wbc.png,item-{a.pk}/wbc-p.png,0.9"]


def test_expert_regions_coco_lists_every_answer(scene, admin_client):
    doc = json.loads(body(admin_client.get(url(scene["project"], "expert_regions.coco.json"))))
    assert len(doc["images"]) == 2 and len(doc["annotations"]) == 3
    assert {img["file_name"].rsplit(".", 1)[-1] for img in doc["images"]} == {"png"}
    assert all(len(img["file_name"]) == 68 for img in doc["images"])  # content hash + .png


def test_votes_coco_carries_pseudonyms_and_reads_back_per_annotator(scene, admin_client):
    project, workers = scene["project"], scene["workers"]
    text = body(admin_client.get(url(project, "votes.coco.json"))).decode()
    for leaked in ("region-worker", "set.zip"):
        assert leaked not in text
    parsed = parse_coco(text, "masks")
    by_item = {img.id: img.regions_by_annotator() for img in parsed.images}
    classes = ["WBC", "RBC"]
    for (w, item), regions in scene["votes"].items():
        if w == 2:  # a blocked worker's vote is excluded, as aggregation excludes it
            assert worker_pseudonym(project.id, workers[w].pk) not in by_item[item.pk]
            continue
        # "nothing here" has no annotation but the image lists its annotator: an empty answer
        read = by_item[item.pk][worker_pseudonym(project.id, workers[w].pk)]
        assert read == [{**r, "label": classes[r["label"]]} for r in regions]
    assert set(by_item) == {scene["a"].pk, scene["b"].pk}


def test_votes_jsonl_of_a_region_project(scene, admin_client):
    project, workers = scene["project"], scene["workers"]
    lines = [json.loads(line) for line in body(admin_client.get(url(project, "votes.jsonl"))).splitlines()]
    assert len(lines) == 3
    assert {line["worker"] for line in lines} == {worker_pseudonym(project.id, w.pk) for w in workers[:2]}
    empty = [line for line in lines if line["task"] == scene["b"].pk]
    assert empty == [{"task": scene["b"].pk, "worker": worker_pseudonym(project.id, workers[0].pk),
                      "regions": []}]
    polygon = next(r for line in lines for r in line["regions"] if r["shape"] == "polygon")
    assert polygon["label"] == "RBC"


def test_region_exports_refuse_other_task_types(scene, admin_client):
    project = scene["project"]
    Project.objects.filter(pk=project.pk).update(task_type=Project.TaskType.BOXES)
    response = admin_client.get(url(project, "consensus_masks.zip"))
    assert response.status_code == 400 and "masks projects" in response.json()["detail"]
    Project.objects.filter(pk=project.pk).update(task_type=Project.TaskType.IMAGE)
    for name in ("consensus.coco.json", "expert_regions.coco.json", "votes.coco.json"):
        response = admin_client.get(url(project, name))
        assert response.status_code == 400 and "points or boxes or masks" in response.json()["detail"]


@pytest.mark.parametrize(
    "name", ["consensus.coco.json", "expert_regions.coco.json", "votes.coco.json", "consensus_masks.zip"]
)
def test_region_exports_are_for_admins_only(project, name, expert_client, crowd_client, anon_client):
    path = url(project, name)
    assert expert_client.get(path).status_code == 403
    assert crowd_client.get(path).status_code == 403
    assert anon_client.get(path).status_code == 401


def test_exported_votes_import_back_as_crowd_votes(scene, admin_client, other_project, settings):
    """votes.coco.json into another project with coco_as='votes': every counted vote comes back,
    "nothing here" included, under a pseudonymous crowd member, through the vote service."""
    from labeling.services.imports import ImportRefused, _imported_annotator
    from tests.labeling.test_imports import make_zip

    project = scene["project"]
    text = body(admin_client.get(url(project, "votes.coco.json")))
    doc = json.loads(text)
    images = {img["file_name"]: Item.objects.get(pk=img["id"]) for img in doc["images"]}
    archive = make_zip({name: item.image.open("rb").read() for name, item in images.items()})
    target = as_region_project(other_project)
    no_annotator = json.loads(text)
    del no_annotator["annotations"][0]["annotator"]
    with pytest.raises(ImportRefused, match="names no annotator"):
        import_files(target, [("votes.zip", archive)], coco=json.dumps(no_annotator).encode(), coco_as="votes")
    assert not Item.objects.filter(project=target).exists()
    assert not Membership.objects.filter(project=target, user__username__startswith="coco-").exists()

    batch = import_files(target, [("votes.zip", archive)], coco=text, coco_as="votes")
    assert batch.n_imported == 2 and batch.n_labels == 3
    imported = Vote.objects.filter(project=target)
    assert imported.count() == 3 and set(imported.values_list("kind", "source")) == {("regions", "api")}
    assert not imported.filter(assignment__isnull=True).exists()
    for (w, item), regions in scene["votes"].items():
        if w == 2:
            continue
        pseudonym = worker_pseudonym(project.id, scene["workers"][w].pk)
        worker = _imported_annotator(target, pseudonym)
        assert worker.username.startswith(f"coco-{target.pk}-") and pseudonym not in worker.username
        name = next(n for n, i in images.items() if i.pk == item.pk)
        vote = imported.get(worker=worker, item__source_name=f"votes.zip/{name}")
        assert vote.regions == regions
    assert set(Item.objects.filter(project=target).values_list("vote_count", flat=True)) == {1, 2}
    # a second import of the same file adds nothing
    again = import_files(target, [("votes.zip", archive)], coco=text, coco_as="votes")
    assert again.n_duplicates == 2 and again.n_labels == 0 and Vote.objects.filter(project=target).count() == 3


def test_dashboard_links_the_region_exports(scene, admin_user):
    from django.test import Client

    page = Client()
    page.force_login(admin_user)
    response = page.get(f"/projects/{scene['project'].id}/")
    assert response.status_code == 200
    html = response.content.decode()
    for name in ("consensus.coco.json", "consensus_masks.zip", "expert_regions.coco.json", "votes.coco.json"):
        assert f"/api/projects/{scene['project'].id}/exports/{name}" in html
    assert "exports/votes.csv" not in html  # class votes only: empty for a region project
    assert "exports/holdout.csv" not in html  # a class export too
    # a masks project's runs are scored by Dice, its annotators by specificity as well
    assert 'data-testid="region-score-heading">Mean Dice<' in html
    assert 'data-testid="method-mask_majority"' in html and 'data-testid="method-staple"' in html
    annotators = html[html.index('data-testid="annotators"') :].split("</thead>")[0]
    assert "Specificity" in annotators and "Confusion" not in annotators
