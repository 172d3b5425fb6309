"""The in-memory loader: the same augmentation as torchvision's, determinism, resume, sharding, the pixel cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from dualadam.tasks.image.data import build_image_data
from dualadam.tasks.image.data.decoding import decode_images
from dualadam.tasks.image.data.device_loaders import DeviceEpochLoader, DeviceEvalLoader, rank_slice
from dualadam.tasks.image.data.device_transforms import Normalizer, gather_augmented
from dualadam.tasks.image.data.memory import resolve_loader
from dualadam.tasks.image.data.pixel_cache import CACHE_FOLDER, read_pixels
from dualadam.tasks.image.data.sources import FileImages

CPU = torch.device("cpu")
PAD = 4
SYNTHETIC = dict(name="synthetic", train_size=96, test_size=48, loader="memory")


def build(cfg: dict, batch_size: int = 16, seed: int = 0, **kwargs):
    return build_image_data(cfg, batch_size=batch_size, eval_batch_size=batch_size, num_workers=0, seed=seed,
                            **kwargs)


def epoch(loader, number: int, start_batch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(number, start_batch)
    return list(loader)


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b))


def coordinate_images(count: int, size: int = 32) -> torch.Tensor:
    """uint8 [count, 3, size, size] whose pixels name their own position: R = row + 1, G = column + 1 (so the
    zero padding, 0, is told apart from every real pixel), B = image number."""
    rows = torch.arange(1, size + 1, dtype=torch.uint8).view(size, 1).expand(size, size)
    images = torch.stack([rows, rows.T, torch.zeros_like(rows)]).repeat(count, 1, 1, 1)
    images[:, 2] = torch.arange(count, dtype=torch.uint8).view(count, 1, 1)
    return images


def crop_parameters(image: torch.Tensor) -> tuple[int, int, bool]:
    """(top, left, flipped) of a crop of a ``coordinate_images`` image padded by PAD, read off its pixels."""
    size = image.shape[-1]
    i, j = torch.nonzero((image[0] > 0) & (image[1] > 0))[0].tolist()  # some real (not padded) pixel
    row, column = int(image[0, i, j]) - 1, int(image[1, i, j]) - 1
    real_columns = image[1, i][image[1, i] > 0].tolist()
    flipped = len(real_columns) > 1 and real_columns[0] > real_columns[-1]
    left = column + PAD - (size - 1 - j if flipped else j)
    return row + PAD - i, left, flipped


# --- the augmentation is torchvision's ---------------------------------------------------------------------


@pytest.mark.parametrize("top, left, flip", [(0, 0, False), (8, 8, True), (0, 8, True), (3, 5, False), (4, 4, True)])
def test_a_fixed_crop_and_flip_equal_torchvisions_to_the_bit(top, left, flip):
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    crops = [TF.crop(TF.pad(image, [PAD]), top, left, 32, 32) for image in images]  # RandomCrop(32, padding=4)
    crops = torch.stack([TF.horizontal_flip(crop) if flip else crop for crop in crops])
    ours = gather_augmented(images, torch.arange(2), torch.tensor([top, top]), torch.tensor([left, left]),
                            torch.tensor([flip, flip]), PAD)
    assert torch.equal(ours, crops)
    expected = TF.normalize(TF.to_dtype(crops, torch.float32, scale=True), mean, std)
    assert torch.allclose(Normalizer(mean, std, device=CPU)(ours), expected, atol=1e-5, rtol=0)


def test_every_torchvision_output_is_one_of_ours():
    """torchvision's own RandomCrop + RandomHorizontalFlip lands on a crop our parameterization produces."""
    image = coordinate_images(1)[0]
    torchvision_aug = v2.Compose([v2.RandomCrop(32, padding=PAD), v2.RandomHorizontalFlip()])
    torch.manual_seed(0)
    for _ in range(30):
        out = torchvision_aug(image)
        top, left, flip = crop_parameters(out)
        ours = gather_augmented(image[None], torch.tensor([0]), torch.tensor([top]), torch.tensor([left]),
                                torch.tensor([flip]), PAD)
        assert torch.equal(ours[0], out)


def test_crop_offsets_and_flip_rate_match_torchvisions_distribution():
    count = 1800
    images = coordinate_images(1).expand(count, -1, -1, -1).contiguous()
    loader = DeviceEpochLoader(images, torch.zeros(count, dtype=torch.int64), lambda x: x, batch_size=600,
                               seed=3, augmentation="crop_flip", padding=PAD)
    ours = [crop_parameters(image) for batch, _ in epoch(loader, 0) for image in batch]
    torchvision_aug = v2.Compose([v2.RandomCrop(32, padding=PAD), v2.RandomHorizontalFlip()])
    torch.manual_seed(0)
    theirs = [crop_parameters(torchvision_aug(images[0])) for _ in range(count)]
    for params in (ours, theirs):
        tops, lefts, flips = (np.array(p) for p in zip(*params))
        for offsets in (tops, lefts):  # uniform on 0..8, both ends included: 200 expected per value
            counts = np.bincount(offsets, minlength=2 * PAD + 1)
            assert len(counts) == 2 * PAD + 1 and counts.min() > 140 and counts.max() < 260, counts
        assert abs(flips.mean() - 0.5) < 0.05  # 5 standard errors


def test_padding_is_zero_pixels_as_in_torchvision():
    images = torch.full((1, 3, 32, 32), 200, dtype=torch.uint8)
    corner = gather_augmented(images, torch.tensor([0]), torch.tensor([0]), torch.tensor([0]),
                              torch.tensor([False]), PAD)[0]
    assert (corner[:, :PAD] == 0).all() and (corner[:, :, :PAD] == 0).all() and (corner[:, PAD:, PAD:] == 200).all()
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    assert torch.allclose(Normalizer(mean, std, device=CPU)(corner[None])[0, :, 0, 0], torch.tensor(-2.0))


# --- order, determinism, resume and sharding ------------------------------------------------------------------


def test_order_and_augmentation_depend_only_on_seed_and_epoch():
    data, again, other_seed = build(SYNTHETIC), build(SYNTHETIC), build(SYNTHETIC, seed=1)
    first = epoch(data.train, 2)
    assert same(first, epoch(again.train, 2))
    assert same(first, epoch(data.train, 2))  # iterating again replays the epoch
    assert not same(first, epoch(data.train, 3)) and not same(first, epoch(other_seed.train, 2))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    epoch(data.train, 4)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone


@pytest.mark.parametrize("start_batch", [0, 1, 4, 6])
def test_starting_at_batch_k_equals_skipping_k_batches(start_batch):
    data = build(SYNTHETIC)  # 96 images, batches of 16: 6 batches
    assert same(epoch(data.train, 5, start_batch), epoch(data.train, 5)[start_batch:])
    with pytest.raises(ValueError, match="start_batch"):
        data.train.set_epoch(0, start_batch=len(data.train) + 1)


def test_without_augmentation_the_batches_equal_the_dataloader_paths():
    """Same permutation from (seed, epoch), same pixels, same normalization (to float rounding)."""
    cfg = dict(SYNTHETIC, augmentation="none")
    memory, dataloader = build(cfg, seed=7), build(dict(cfg, loader="dataloader"), seed=7)
    for loader_pair in ((memory.train, dataloader.train), (memory.train_eval, dataloader.train_eval),
                        (memory.test, dataloader.test)):
        if hasattr(loader_pair[0], "set_epoch"):
            for loader in loader_pair:
                loader.set_epoch(1)
        pairs = list(zip(*loader_pair, strict=True))
        for (x, y), (u, v) in pairs:
            assert torch.equal(y, v) and torch.allclose(x, u, atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_samples, batch_size, world_size", [(100, 8, 3), (96, 16, 2), (50, 1, 3), (7, 4, 4)])
def test_rank_shards_are_disjoint_cover_everything_and_slice_the_global_batch(num_samples, batch_size, world_size):
    pixels = torch.randint(0, 256, (num_samples, 3, 8, 8), dtype=torch.uint8)
    identity = torch.arange(num_samples)  # the labels name the samples

    def loader(rank, world, batch):
        return DeviceEpochLoader(pixels, identity, lambda x: x, batch_size=batch, seed=1, augmentation="crop_flip",
                                 padding=2, rank=rank, world_size=world)

    single = epoch(loader(0, 1, batch_size * world_size), 3)
    shards = [epoch(loader(r, world_size, batch_size), 3) for r in range(world_size)]
    seen = torch.cat([labels for shard in shards for _, labels in shard])
    assert sorted(seen.tolist()) == list(range(num_samples))  # disjoint and covering
    for k, (images, labels) in enumerate(single):  # rank r's batch k is slice r of global batch k
        parts = [shard[k] for shard in shards if k < len(shard)]
        assert torch.equal(torch.cat([p[1] for p in parts]), labels)
        assert torch.equal(torch.cat([p[0] for p in parts]), images)
    assert [len(loader(r, world_size, batch_size)) for r in range(world_size)] == [len(s) for s in shards]


def test_rank_slice_splits_evenly():
    assert [rank_slice(0, 10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [rank_slice(20, 22, r, 3) for r in range(3)] == [(20, 21), (21, 22), (22, 22)]


# --- dtype, layout and device ----------------------------------------------------------------------------------


def test_batches_come_in_the_compute_dtype_and_memory_format():
    data = build(SYNTHETIC, dtype=torch.bfloat16, memory_format=torch.channels_last)
    for loader in (data.train, data.train_eval, data.test):
        images, labels = next(iter(loader))
        assert images.dtype == torch.bfloat16 and images.is_contiguous(memory_format=torch.channels_last)
        assert labels.dtype == torch.int64
    full = build(SYNTHETIC)
    reference, _ = next(iter(full.test))
    assert torch.allclose(next(iter(data.test))[0].float(), reference, atol=0.05, rtol=0.01)


def test_eval_loaders_are_fixed_and_train_eval_is_a_subset_of_train():
    data = build(SYNTHETIC)
    assert same(list(data.test), list(data.test)) and len(data.test) == 3
    assert isinstance(data.train_eval, DeviceEvalLoader)
    train_images = data.train.pixels  # uint8 [N, C, H, W]
    norm = Normalizer(data.info.mean, data.info.std, device=CPU)
    everything = norm(train_images)
    for images, _ in data.train_eval:
        for image in images:
            assert (everything - image).abs().amax(dim=(1, 2, 3)).min() < 1e-5


# --- choosing the loader ---------------------------------------------------------------------------------------


def test_loader_choice():
    def size():
        return 10**9

    assert resolve_loader("auto", "crop_flip", 1.0, size) == "memory"
    assert resolve_loader("auto", "flip", 1.0, size, budget_gb=0.5) == "dataloader"  # over the budget
    assert resolve_loader("auto", "random_resized_crop", 0.875, size) == "dataloader"  # ImageNet
    assert resolve_loader("dataloader", "crop_flip", 1.0, size) == "dataloader"
    with pytest.raises(ValueError, match="random_resized_crop.*dataset.loader=dataloader"):
        resolve_loader("memory", "random_resized_crop", 0.875, size)
    with pytest.raises(ValueError, match="'auto', 'memory', 'dataloader'"):
        resolve_loader("gpu", "crop_flip", 1.0, size)


def test_dataset_configs_pick_the_memory_loader_for_small_sets():
    data = build(dict(SYNTHETIC, loader="auto"))
    assert type(data.train).__name__ == "DeviceEpochLoader"
    assert type(build(dict(SYNTHETIC, loader="dataloader")).train).__name__ == "ShuffledEpochLoader"


# --- decoding and the pixel cache --------------------------------------------------------------------------------


def write_pngs(folder: Path, count: int, height: int = 32, width: int = 32, seed: int = 0) -> list[str]:
    generator = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(generator.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def write_tiny_imagenet(root: Path, height: int, width: int) -> None:
    """A 2-class Tiny-ImageNet-layout set of PNG images of ``height`` x ``width``."""
    for split, count in (("train", 6), ("val", 3)):
        for k, wnid in enumerate(("n01", "n02")):
            sub = "images" if split == "train" else ""
            write_pngs(root / "tiny_imagenet" / split / wnid / sub, count, height, width, seed=10 * k + count)


def cache_files(root: Path, name: str) -> list[Path]:
    return sorted((root / name / CACHE_FOLDER).glob("*.pixels"))


def test_flip_only_sets_are_fitted_to_size_as_the_dataloader_path_does(tmp_path):
    write_tiny_imagenet(tmp_path, height=40, width=48)  # not the model size: resized and center-cropped once
    cfg = dict(name="tiny_imagenet", root=str(tmp_path), image_size=32)
    memory, dataloader = build(dict(cfg, loader="memory")), build(dict(cfg, loader="dataloader"))
    assert memory.train.pixels.shape == (12, 3, 32, 32)
    for a, b in zip(memory.test, dataloader.test, strict=True):
        assert torch.equal(a[1], b[1]) and torch.allclose(a[0], b[0], atol=1e-5, rtol=0)


def test_the_cache_is_reused_and_invalidated_by_a_different_subset_or_file(tmp_path):
    write_tiny_imagenet(tmp_path, height=32, width=32)
    cfg = dict(name="tiny_imagenet", root=str(tmp_path), image_size=32, loader="memory")
    first = build(cfg)
    files = cache_files(tmp_path, "tiny_imagenet")
    assert len(files) == 2  # train and val
    stamps = [f.stat().st_mtime_ns for f in files]
    assert torch.equal(build(cfg).train.pixels, first.train.pixels)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # read back, not rewritten
    build(dict(cfg, train_subset=6))
    assert len(cache_files(tmp_path, "tiny_imagenet")) == 3  # a new subset, a new cache file
    image = tmp_path / "tiny_imagenet" / "train" / "n01" / "images" / "000.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)  # rewritten in place
    os.utime(image, ns=(1, 1))
    changed = build(cfg)
    assert len(cache_files(tmp_path, "tiny_imagenet")) == 4
    assert (changed.train.pixels == 0).all(dim=(1, 2, 3)).sum() == 1


@pytest.mark.parametrize("damage", ["truncate", "flip_a_byte", "garbage"])
def test_a_damaged_cache_file_is_decoded_again_and_rewritten(tmp_path, damage, caplog):
    write_tiny_imagenet(tmp_path, height=32, width=32)
    cfg = dict(name="tiny_imagenet", root=str(tmp_path), image_size=32, loader="memory")
    expected = build(cfg).train.pixels.clone()
    train_cache = next(f for f in cache_files(tmp_path, "tiny_imagenet") if f.name.startswith("train-"))
    raw = bytearray(train_cache.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) - 100]
    elif damage == "flip_a_byte":
        raw[-10] ^= 0xFF
    else:
        raw = bytearray(b"not a cache file\n" * 10)
    train_cache.write_bytes(bytes(raw))
    assert read_pixels(train_cache, 12) is None
    assert torch.equal(build(cfg).train.pixels, expected)
    assert "decoding the images again" in caplog.text
    assert read_pixels(train_cache, 12) is not None  # rewritten intact


def test_fast_decoding_gives_pils_pixels(tmp_path):
    paths = write_pngs(tmp_path / "png", 4, 20, 24)
    jpeg = tmp_path / "gray.jpg"
    Image.fromarray(np.arange(400, dtype=np.uint8).reshape(20, 20) % 251).save(jpeg, quality=90)
    source = FileImages(paths, [0] * len(paths), ["a"])
    assert np.array_equal(decode_images(paths), source.decode_all().pixels)
    gray = decode_images([str(jpeg)])
    assert gray.shape == (1, 20, 20, 3)
    assert np.array_equal(gray, FileImages([jpeg], [0], ["a"]).decode_all().pixels)
    with pytest.raises(ValueError, match="different sizes.*dataset.loader=dataloader"):
        decode_images(paths + [str(jpeg)])


# --- the real CIFAR-10 ------------------------------------------------------------------------------------------


def channel_statistics(loader) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.cat([x.float() for x, _ in loader])
    return images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))


def test_real_cifar10_matches_the_torchvision_pipeline(cifar10_subset_root):
    cfg = dict(name="cifar10", root=str(cifar10_subset_root), download=False, test_subset=1000)
    memory, dataloader = build(dict(cfg, loader="memory"), 500), build(dict(cfg, loader="dataloader"), 500)
    # Decoding: the same pixels as PIL's, image for image.
    assert np.array_equal(memory.train.pixels.permute(0, 2, 3, 1).numpy(),
                          dataloader.train.loader.dataset.source.pixels)
    # Evaluation: the same normalized batches.
    for (x, y), (u, v) in zip(memory.test, dataloader.test, strict=True):
        assert torch.equal(y, v) and torch.allclose(x, u, atol=1e-5, rtol=0)
    # Training: the same per-channel statistics of the augmented, normalized images over an epoch.
    for loader in (memory.train, dataloader.train):
        loader.set_epoch(0)
    (mean, std), (tv_mean, tv_std) = channel_statistics(memory.train), channel_statistics(dataloader.train)
    assert torch.allclose(mean, tv_mean, atol=0.01) and torch.allclose(std, tv_std, atol=0.01)
    # ... and they differ from the unaugmented ones by the zero padding, as torchvision's do.
    plain_mean, _ = channel_statistics(DeviceEvalLoader(memory.train.pixels, memory.train.labels,
                                                        memory.train.normalize, batch_size=500))
    assert ((tv_mean - plain_mean) * (mean - plain_mean) > 0).all()


def test_a_cached_real_cifar10_is_read_back_the_same(cifar10_subset_root):
    cfg = dict(name="cifar10", root=str(cifar10_subset_root), download=False, loader="memory")
    first = build(cfg)
    assert cache_files(cifar10_subset_root, "cifar10")
    again = build(cfg)
    assert torch.equal(first.train.pixels, again.train.pixels) and torch.equal(first.test.pixels, again.test.pixels)



def test_real_cifar10_validation_files_are_held_out_and_cached_as_their_own_split(cifar10_subset_root):
    cfg = dict(name="cifar10", root=str(cifar10_subset_root), download=False, val_size=500, train_subset=1000,
               test_subset=200)
    files = build(dict(cfg, loader="dataloader", preload=False), 100)   # sources keep their file paths
    paths = {name: set(loader.dataset.source.paths) for name, loader in
             (("train", files.train.loader), ("train_eval", files.train_eval), ("val", files.val),
              ("test", files.test))}
    assert len(paths["val"]) == 500 and len(paths["train"]) == 1000 and paths["train_eval"] <= paths["train"]
    assert not paths["val"] & (paths["train"] | paths["test"])
    assert np.bincount(files.val.dataset.source.labels).tolist() == [50] * 10
    memory = build(dict(cfg, loader="memory"), 100)                     # the same images, through the cache
    for (x, y), (u, v) in zip(memory.val, files.val, strict=True):
        assert torch.equal(y, v) and torch.allclose(x, u, atol=1e-5, rtol=0)
    assert any(path.name.startswith("val-") for path in cache_files(cifar10_subset_root, "cifar10"))
