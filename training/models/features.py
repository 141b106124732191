"""Item image features from a torchvision CNN with its classifier removed, cached on disk.

    backbone = load_backbone("resnet18", weights="resnet18.pth")   # a local file; None = random
    feats = extract_features(images, "features.npy", backbone)    # float32 (n_items, 512)

    python -m training.models.features --items data/synthetic/items.tsv \
        --train data/synthetic/train.tsv \
        --out data/synthetic/features.npy [--weights resnet18.pth]
    python -m training.models.features --items data/synthetic/items.tsv \
        --model runs/prnn --train data/day6.tsv --out data/day6-features.npy  # for `update`

The rows follow the item order training gives the --train file; with --model, the order
`update --model M --train FILE` gives the updated model (M's items, then those the new
clicks add; same --min-item-support and --min-session-length), for its --features.

Nothing is downloaded: weights come from a local state_dict file, and without one the
network keeps its seeded random initialisation (enough for tests, and random convolutions
still separate colours and textures). Extraction writes rows into `OUT.partial.npy` and
records how many are done in `OUT.progress.json` after every batch, so an interrupted run
continues where it stopped; the finished array is renamed to OUT.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from tqdm.auto import tqdm

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what torchvision's pretrained weights expect
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageSource(Protocol):
    """Pictures of items 0..len-1 in vocabulary order."""

    def __len__(self) -> int: ...

    def batch(self, start: int, stop: int) -> np.ndarray:
        """uint8 (stop - start, 3, H, W) pictures of items start..stop-1."""
        ...


def load_backbone(
    arch: str = "resnet18", weights: str | Path | None = None, seed: int = 0
) -> nn.Module:
    """A torchvision ResNet with `fc` replaced by identity, in eval mode: (B, 3, H, W) float
    -> (B, d) pooled features (d = 512 for resnet18/34, 2048 for resnet50 and up).

    weights: path of a state_dict saved with torch.save (e.g. the file torchvision caches
    as ~/.cache/torch/hub/checkpoints/resnet18-*.pth, copied over by hand); None keeps the
    random initialisation drawn with `seed`."""
    builder = getattr(torchvision.models, arch, None)
    if builder is None or not arch.startswith("resnet"):
        raise ValueError(f"arch={arch!r} is not a torchvision ResNet; use e.g. resnet18")
    torch.manual_seed(seed)
    model = builder(weights=None)
    if weights is not None:
        path = Path(weights)
        if not path.exists():
            raise FileNotFoundError(
                f"CNN weights {path} not found; copy a {arch} state_dict there or pass no "
                "weights to use a random network"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{path} does not hold {arch} weights: {err}") from None
    model.fc = nn.Identity()  # keep the pooled features, drop the ImageNet classifier
    return model.eval()


def preprocess(images: np.ndarray, image_size: int | None = None) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, S, S) scaled to [0, 1], resized to `image_size`
    when given, and normalised with the ImageNet mean and std."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    if image_size is not None and x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


def _paths(out: Path) -> tuple[Path, Path]:
    return out.with_name(out.stem + ".partial.npy"), out.with_name(out.stem + ".progress.json")


@torch.no_grad()
def extract_features(
    images: ImageSource,
    out: str | Path,
    backbone: nn.Module,
    batch_size: int = 128,
    image_size: int | None = None,
    fingerprint: str = "",
    progress: bool = True,
) -> np.ndarray:
    """float32 (len(images), d) features, computed batch by batch and cached at `out` (.npy).

    If `out` exists it is loaded and nothing is computed. If an earlier run was interrupted
    its finished rows are kept and only the rest are computed. `fingerprint` names what
    made the features (network, weights, pictures); reusing or resuming a file made under
    another one is refused, since the rows would not belong together. OUT.meta.json keeps
    the finished run's fingerprint."""
    out = Path(out)
    partial, record = _paths(out)
    made_by = out.with_name(out.stem + ".meta.json")  # the finished run's record
    if out.exists():
        state = json.loads(made_by.read_text()) if made_by.exists() else {}
        if state.get("fingerprint", fingerprint) != fingerprint:
            raise ValueError(
                f"{out} was made with fingerprint {state['fingerprint']!r}, not "
                f"{fingerprint!r}; delete it (and {made_by.name}) or choose another path"
            )
        return np.load(out, mmap_mode="r")
    n = len(images)
    done, rows = _resume(partial, record, n, fingerprint)
    with tqdm(
        total=n, initial=done, desc="image features", unit="img", disable=not progress
    ) as bar:
        while done < n:
            stop = min(done + batch_size, n)
            feats = backbone(preprocess(images.batch(done, stop), image_size)).numpy()
            if rows is None:  # the feature size is known after the first batch
                out.parent.mkdir(parents=True, exist_ok=True)
                rows = np.lib.format.open_memmap(partial, "w+", np.float32, (n, feats.shape[1]))
            rows[done:stop] = feats
            rows.flush()  # rows on disk before the record says they are done
            done = stop
            _write_record(record, {"done": done, "n": n, "fingerprint": fingerprint})
            bar.update(stop - bar.n)
    if rows is None:
        raise ValueError("no images to extract features from")
    del rows
    os.replace(partial, out)
    os.replace(record, made_by)
    return np.load(out, mmap_mode="r")


def _resume(partial: Path, record: Path, n: int, fingerprint: str):
    """(rows already done, the open partial array or None) for a fresh or resumed run."""
    if not (partial.exists() and record.exists()):
        return 0, None
    state = json.loads(record.read_text())
    if state.get("n") != n or state.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{partial} was started for {state.get('n')} items with fingerprint "
            f"{state.get('fingerprint')!r}, not {n} and {fingerprint!r}; delete it and "
            f"{record.name} to start over"
        )
    return int(state["done"]), np.load(partial, mmap_mode="r+")


def _write_record(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)  # atomic: a crash leaves the old or the new record, never half


def file_digest(path: str | Path | None) -> str:
    """Short sha256 of a weights file (for fingerprints); "random" without one."""
    if path is None:
        return "random"
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    from ..data.images import SyntheticImages
    from ..data.logs import ItemVocab, read_events

    ap = argparse.ArgumentParser(
        description="Image features of synthetic items, in the vocabulary order training uses."
    )
    ap.add_argument("--items", required=True, help="items.tsv: ItemId, category, style")
    ap.add_argument("--train", required=True, help="training clicks; fixes the item order")
    ap.add_argument("--model", help="a p-RNN to update on --train: rows for the updated model")
    ap.add_argument("--min-item-support", type=int, default=5, help="with --model: update's")
    ap.add_argument("--min-session-length", type=int, default=2, help="with --model: update's")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--weights", default=None, help="local state_dict; default: random")
    ap.add_argument("--size", type=int, default=32, help="picture size in pixels")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import pandas as pd

    items = pd.read_csv(args.items, sep="\t", dtype={"ItemId": str})
    events = read_events(args.train)
    if args.model:  # the updated model's order: the model's items, then update's new ones
        from ..fit.train import load_model
        from ..fit.update import UpdateOptions, select_clicks, updated_vocabulary

        parent = load_model(args.model, device="cpu").vocab
        options = UpdateOptions(args.min_item_support, args.min_session_length)
        vocab = updated_vocabulary(parent, select_clicks(events, parent, options)[0])
    else:
        vocab = ItemVocab.from_events(events)
    where = pd.Index(items["ItemId"]).get_indexer(vocab.ids)  # catalogue row of each index
    if (where < 0).any():
        missing = vocab.ids[where < 0][:3].tolist()
        raise SystemExit(f"{args.items} lacks items of {args.train}, e.g. {missing}")
    catalogue = SyntheticImages(
        items["category"].to_numpy(), items["style"].to_numpy(), size=args.size, seed=args.seed
    )
    images = catalogue.subset(where)  # pictures in vocabulary order
    backbone = load_backbone(args.arch, args.weights, args.seed)
    # the item order too: a file kept for other items (another --train or --model) is refused
    order = hashlib.sha256("\n".join(map(str, vocab.ids)).encode()).hexdigest()[:12]
    fingerprint = f"{args.arch}:{file_digest(args.weights)}:synthetic:{args.size}:{args.seed}"
    fingerprint += f":items {order}"
    feats = extract_features(images, args.out, backbone, args.batch_size, None, fingerprint)
    print(f"{args.out}: {feats.shape[0]} items x {feats.shape[1]} features")


if __name__ == "__main__":
    main()
