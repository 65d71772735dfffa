"""The store views the stages share: one name, one vector size and one key per feature.

    feature  view               dim   keyed by  written by
    ic       image/vgg16@1      512   item_id   jobs.extract     (VGG16 conv layers + global average pool)
    od       image/yolo@1        80   item_id   jobs.extract     (per COCO class, max over boxes)
    sn       user/node2vec@1   (--dim) user_id  jobs.embed_users (node2vec; its size is a flag)
    -        post/topk@<model id>  -  post_id   jobs.score       (record view: top-k tags per post)

Every stage reads these names from here (`featurestore.DEFAULT_VIEWS` too), so renaming a
view or bumping its version is one edit. A model records the views it was trained on in
its model.json; these are the defaults when it names none. Pure Python: importable where
only numpy and torch are installed (a GPU worker has no LMDB).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureView:
    """One feature a recommender reads: where it lives in the store and how it is keyed."""

    key: str          # the batch key: "ic", "od", "sn" (docs/interfaces.md)
    view: str         # default store view, entity/name@version
    dim: int | None   # vector length; None where the producing job's flags decide it
    keyed_by: str     # "item" (image views: one vector per distinct image) or "user"
    writer: str       # the job that writes the view (named in "missing view" errors)


IC_VIEW, OD_VIEW, SN_VIEW = "image/vgg16@1", "image/yolo@1", "user/node2vec@1"
IC_DIM, OD_DIM = 512, 80
TOPK_VIEW_PREFIX = "post/topk@"   # + model id: one view per trained model's weights, keyed by post_id

FEATURES: dict[str, FeatureView] = {
    "ic": FeatureView("ic", IC_VIEW, IC_DIM, "item", "jobs.extract"),
    "od": FeatureView("od", OD_VIEW, OD_DIM, "item", "jobs.extract"),
    "sn": FeatureView("sn", SN_VIEW, None, "user", "jobs.embed_users"),
}

# feature key -> default view name
DEFAULT_FEATURE_VIEWS: dict[str, str] = {f: v.view for f, v in FEATURES.items()}
# feature key -> fixed vector length (the image features; sn is sized by the store's view)
FEATURE_DIMS: dict[str, int] = {f: v.dim for f, v in FEATURES.items() if v.dim is not None}
