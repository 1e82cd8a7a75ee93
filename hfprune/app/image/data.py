"""Image-classification data for the CNN path: an imagefolder, a `datasets` image dataset, or local .npz arrays.

Every source ends as an `ImageSet` of float tensors in [0, 1], shaped (N, C, H, W) with the model's channel count
and a common size, plus integer labels, so Trainer, the channel scorers and the evaluation read the same batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

_IMAGE_COLUMNS = ("image", "img", "pixel_values")
_LABEL_COLUMNS = ("label", "labels", "fine_label")
_EVAL_SPLITS = ("validation", "valid", "val", "test")


class ImageSet(torch.utils.data.Dataset):
    """`{"pixel_values": Tensor[C, H, W], "labels": int}` examples held in memory."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor):
        self.pixels, self.labels = pixels, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


def _to_tensor(array: np.ndarray, num_channels: int, size: int | None, source: str) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(array), dtype=torch.float32)
    if x.dim() == 3:
        x = x.unsqueeze(1)  # (N, H, W): grey images
    elif x.dim() == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C)
    if x.dim() != 4:
        raise ValueError(f"{source}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C), got {tuple(x.shape)}")
    if x.numel() and x.max() > 1.0:
        x = x / 255.0
    if x.shape[1] != num_channels:
        if x.shape[1] == 1:
            x = x.expand(-1, num_channels, -1, -1)
        elif num_channels == 1:
            x = x.mean(1, keepdim=True)
        else:
            raise ValueError(f"{source}: images have {x.shape[1]} channels, the model expects {num_channels}")
    if size and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.contiguous()


def _from_npz(path: str, num_channels: int, size: int | None) -> ImageSet:
    if not Path(path).is_file():
        raise FileNotFoundError(f"image array file {path} does not exist")
    with np.load(path) as data:
        missing = [k for k in ("images", "labels") if k not in data]
        if missing:
            raise ValueError(f"{path}: a .npz image file needs arrays 'images' and 'labels' (missing {missing}, "
                             f"found {sorted(data.files)})")
        images, labels = data["images"], data["labels"]
    if len(images) != len(labels):
        raise ValueError(f"{path}: {len(images)} images but {len(labels)} labels")
    return ImageSet(_to_tensor(images, num_channels, size, path), torch.as_tensor(labels, dtype=torch.long))


def _from_split(split, num_channels: int, size: int | None, source: str) -> ImageSet:
    image_col = next((c for c in _IMAGE_COLUMNS if c in split.column_names), None)
    label_col = next((c for c in _LABEL_COLUMNS if c in split.column_names), None)
    if image_col is None or label_col is None:
        raise ValueError(f"{source}: needs an image column ({'/'.join(_IMAGE_COLUMNS)}) and a label column "
                         f"({'/'.join(_LABEL_COLUMNS)}); found {split.column_names}")
    mode = "L" if num_channels == 1 else "RGB"
    arrays = []
    for image in split[image_col]:
        image = image.convert(mode)
        if size:
            image = image.resize((size, size))
        arrays.append(np.asarray(image, dtype=np.float32))
    if len({a.shape for a in arrays}) > 1:
        raise ValueError(f"{source}: images have different sizes; set data.image_size (--image-size)")
    return ImageSet(_to_tensor(np.stack(arrays), num_channels, None, source),
                    torch.as_tensor(split[label_col], dtype=torch.long))


def _splits(dataset, source: str) -> tuple:
    if "train" not in dataset:
        raise ValueError(f"{source}: no 'train' split (found {list(dataset)})")
    eval_name = next((s for s in _EVAL_SPLITS if s in dataset), None)
    if eval_name is None:
        raise ValueError(f"{source}: no evaluation split ({'/'.join(_EVAL_SPLITS)}); found {list(dataset)}")
    return dataset["train"], dataset[eval_name]


def _subset(data: ImageSet, n: int | None, seed: int | None) -> ImageSet:
    if n is None or n >= len(data):
        return data
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n] if seed is not None \
        else torch.arange(n)
    return ImageSet(data.pixels[index], data.labels[index])


def load_image_eval(*, data_dir=None, dataset=None, validation_file=None, num_channels: int = 3,
                    image_size: int | None = None, max_eval_samples: int | None = None) -> ImageSet:
    """Only the evaluation set (`hfprune eval`): a .npz file, or the validation / test split of an imagefolder or a
    `datasets` image dataset.

    Raises:
        ValueError: not exactly one source given, or the source has no evaluation split (named).
    """
    given = [n for n, v in (("data_dir", data_dir), ("dataset", dataset), ("validation_file", validation_file)) if v]
    if len(given) != 1:
        raise ValueError(f"image-classification evaluation needs exactly one of --data-dir (imagefolder), --dataset "
                         f"or --validation-file (.npz), got {given or 'none'}")
    if validation_file:
        data = _from_npz(validation_file, num_channels, image_size)
    else:
        import datasets

        source = data_dir or dataset
        if data_dir:
            if not Path(data_dir).is_dir():
                raise FileNotFoundError(f"imagefolder {data_dir} is not a folder")
            loaded = datasets.load_dataset("imagefolder", data_dir=data_dir)
        else:
            loaded = datasets.load_from_disk(dataset) if Path(dataset).is_dir() else datasets.load_dataset(dataset)
        name = next((s for s in _EVAL_SPLITS if s in loaded), None)
        if name is None:
            raise ValueError(f"{source}: no evaluation split ({'/'.join(_EVAL_SPLITS)}); found {list(loaded)}")
        data = _from_split(loaded[name], num_channels, image_size, source)
    return _subset(data, max_eval_samples, None)


def load_image_data(data_cfg, num_channels: int, image_size: int | None, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """The (train, evaluation) sets of an image-classification recipe (`DataConfig` with task image-classification).

    Raises:
        FileNotFoundError / ValueError: a missing file or folder, a split or column that is not there (named).
    """
    if data_cfg.train_file:
        train = _from_npz(data_cfg.train_file, num_channels, image_size)
        evaluation = _from_npz(data_cfg.validation_file, num_channels, image_size)
    else:
        import datasets

        if data_cfg.data_dir:
            if not Path(data_cfg.data_dir).is_dir():
                raise FileNotFoundError(f"imagefolder {data_cfg.data_dir} is not a folder")
            source = data_cfg.data_dir
            loaded = datasets.load_dataset("imagefolder", data_dir=source)
        else:
            source = data_cfg.dataset
            loaded = datasets.load_from_disk(source) if Path(source).is_dir() else datasets.load_dataset(source)
        train_split, eval_split = _splits(loaded, source)
        train = _from_split(train_split, num_channels, image_size, source)
        evaluation = _from_split(eval_split, num_channels, image_size, source)
    return (_subset(train, data_cfg.max_train_samples, seed), _subset(evaluation, data_cfg.max_eval_samples, None))
