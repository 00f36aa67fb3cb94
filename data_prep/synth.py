"""Synthetic MRI-like phantoms: the embedded default dataset and the CI data.

Each image is a T1-like axial brain slice drawn from simple geometry:

* dark background (air) holding Rician noise, as magnitude MR images do;
* a bright scalp/skull ring (an ellipse of random size, aspect and thickness), a dark
  CSF gap inside it, then the parenchyma: a grey-matter ribbon around brighter white
  matter with a wavy boundary, sulci (level lines of smooth noise), smooth texture,
  the dark interhemispheric fissure and two dark lateral ventricles (a butterfly);
* one lesion per tumour class, whose mask is written too (for Grad-CAM localisation):
  glioma: irregular intra-axial mass, dark necrotic core, bright rim, dark oedema halo;
  meningioma: round, homogeneous, bright extra-axial mass on the skull's inner edge;
  pituitary: small ovoid midline mass at the skull base, below the ventricles;
  notumor: no lesion.

Acquisition variation: image size (each side 200-512 px, rarely square), head size,
aspect, position and in-plane rotation, bias field, blur, noise level, brightness,
contrast and gamma. Lesions enhance like tumours on contrast T1 (as bright as the
scalp, brighter than white matter) but are small, so global intensity statistics
barely tell the classes apart; shape and position do.

The slice is rendered directly in a rotated, shifted "brain frame", so the image and
its mask share exactly the same rotation (the mask is never interpolated). Every image
has its own seed (seed, split, class, index): a file does not depend on which other
files are generated, nor in which order.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import pathlib
from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np
from tqdm import tqdm

from btmri.spec import CLASS_NAMES, KAGGLE_TESTING_DIR, KAGGLE_TRAINING_DIR, class_id
from data_prep.lesion_boxes import format_yolo_box, mask_to_box

# Bind the contract's classes to names; unpacking fails loudly if the contract changes.
GLIOMA, MENINGIOMA, NOTUMOR, PITUITARY = CLASS_NAMES
MASKS_DIR = "masks"
# Every tumour phantom again, with its mask's bounding box, in the layout of a box
# folder (data_prep/lesion_boxes.py): what the real figshare boxes are to the real set.
BOXES_DIR = "boxes"
SPLIT_DIRS = (KAGGLE_TRAINING_DIR, KAGGLE_TESTING_DIR)  # index = split id in the seed


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _ellipse(x, y, cx, cy, ax, ay, angle=0.0):
    """Normalised elliptic radius (< 1 inside) of an ellipse centred at (cx, cy)."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = x - cx, y - cy
    return np.sqrt(((c * dx + s * dy) / ax) ** 2 + ((-s * dx + c * dy) / ay) ** 2)


def _place_lesion(kind, a, b, inner, brain_edge, rng):
    """Lesion centre (brain-frame pixels) and radius (pixels) for a tumour class."""
    if kind == GLIOMA:  # intra-axial: the mass and its halo stay clear of the cortex surface
        radius = rng.uniform(0.14, 0.30)
        while True:
            u, v = rng.uniform(-0.6, 0.6, 2)
            if np.hypot(u, v) < brain_edge - 0.06 - 1.6 * radius:
                return u * a, v * b, radius * a
    if kind == MENINGIOMA:  # extra-axial: centre just inside the inner table, at any angle
        radius, phi = rng.uniform(0.13, 0.26) * a, rng.uniform(0, 2 * np.pi)
        px, py = inner * a * np.cos(phi), inner * b * np.sin(phi)
        shrink = 1.0 - radius * rng.uniform(0.3, 0.6) / np.hypot(px, py)
        return px * shrink, py * shrink, radius
    # pituitary: midline, skull base (bottom of the brain frame), small
    radius = max(rng.uniform(0.07, 0.12) * a, 4.0)
    return rng.normal(0, 0.015) * a, rng.uniform(0.50, 0.64) * b, radius


def _paint_lesion(kind, patch, x, y, lx, ly, radius, in_skull, rng):
    """Paints a lesion into `patch` (a view of the image) in place; returns its bool mask.

    x, y: brain-frame coordinates of the patch; in_skull: inside the skull's inner edge.
    """
    d = _ellipse(x, y, lx, ly, radius, radius * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi))
    shape = d.shape
    if kind == GLIOMA:
        # Irregular boundary: random angular harmonics plus fine noise on the radius.
        theta = np.arctan2(y - ly, x - lx)
        edge = 1.0 + 0.08 * _smooth_noise(rng, *shape, 6)
        for k in range(2, 7):
            edge += rng.uniform(0, 0.25 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        rel = d / edge
        inside = rel < 1.0
        patch[(rel < 1.5) & ~inside] -= rng.uniform(0.04, 0.12)  # oedema: T1-dark halo
        core = rng.uniform(0.15, 0.4) + 0.08 * _smooth_noise(rng, *shape, 5)  # necrosis
        tissue = np.where(rel < rng.uniform(0.0, 0.7), core, rng.uniform(0.72, 0.95))  # enhancing rim
        patch[inside] = tissue[inside]
        return inside
    value = rng.uniform(0.72, 0.95) + 0.04 * _smooth_noise(rng, *shape, 4)  # enhancing
    if kind == MENINGIOMA:  # broad base on the dura: clipped at the skull's inner edge
        patch[(d >= 1.0) & (d < 1.15) & in_skull] = 0.1  # CSF cleft around the mass
        inside = (d < 1.0) & in_skull
    else:
        inside = d < 1.0
    patch[inside] = value[inside]
    return inside


def render_phantom(class_name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns (image uint8 HxW, lesion mask uint8 HxW with 0/255, or None for notumor)."""
    kind = CLASS_NAMES[class_id(class_name)]  # validates the name
    h, w = (int(n) for n in rng.integers(200, 513, 2))
    side = min(h, w)
    b = side * rng.uniform(0.34, 0.43)  # antero-posterior semi-axis (head outer edge)
    a = b * rng.uniform(0.75, 0.9)  # left-right semi-axis
    angle = rng.uniform(-0.35, 0.35)  # about +-20 degrees in-plane rotation
    cx, cy = np.array([w, h]) / 2 + rng.uniform(-0.05, 0.05, 2) * side
    c, s = np.cos(angle), np.sin(angle)
    xs, ys = np.arange(w, dtype=np.float32) - cx, np.arange(h, dtype=np.float32)[:, None] - cy
    xr, yr = c * xs + s * ys, c * ys - s * xs  # brain-frame pixel coordinates
    r = np.sqrt((xr / a) ** 2 + (yr / b) ** 2) * (1 + 0.015 * _smooth_noise(rng, h, w, 4))

    inner = 1.0 - rng.uniform(0.05, 0.10)  # skull thickness varies per head ...
    brain_edge = inner - rng.uniform(0.015, 0.04)
    skull_in = inner + 0.02 * _smooth_noise(rng, h, w, 5)  # ... and along the ring
    csf, gm = rng.uniform(0.04, 0.15), rng.uniform(0.36, 0.5)
    wm = gm + rng.uniform(0.08, 0.2)
    folds, texture = _smooth_noise(rng, h, w, 20), _smooth_noise(rng, h, w, 24)

    img = np.zeros((h, w), np.float32)
    head = r < 1.0
    img[head] = rng.uniform(0.7, 0.95) * (1 + 0.08 * texture[head])  # scalp fat, marrow: T1-bright
    img[r < skull_in] = csf
    brain = r < brain_edge
    white = r < brain_edge - rng.uniform(0.07, 0.12) + 0.05 * folds  # wavy: gyri
    img[brain] = np.where(white, wm, gm)[brain] * (1 + 0.05 * texture[brain])
    img[brain & ~white & (np.abs(_smooth_noise(rng, h, w, 18)) < 0.04)] = csf  # sulci
    fissure = (np.abs(xr) < 1.2) & brain & ((yr < -0.45 * b) | (yr > 0.6 * b))
    img[fissure] = csf
    # Lateral ventricles: per side a frontal horn and a body/atrium, each tilted outwards,
    # which together make the butterfly around the midline.
    dx, vy, tilt = rng.uniform(0.07, 0.11), rng.uniform(-0.12, 0.0), rng.uniform(0.2, 0.45)
    vax, vay = rng.uniform(0.04, 0.06), rng.uniform(0.11, 0.16)
    septum = np.abs(xr) > rng.uniform(1.0, 2.5)  # thin septum pellucidum on the midline
    for sign in (-1, 1):
        for lobe, dy, grow in ((1, -0.8, 1.0), (-1, 0.8, 1.4)):  # frontal horn, atrium
            vent = _ellipse(
                xr / a, yr / b, sign * dx * grow, vy + dy * vay, vax * grow, vay, sign * lobe * tilt
            )
            img[(vent < 1.0 + 0.15 * folds) & septum] = csf

    mask = None
    if kind != NOTUMOR:
        lx, ly, radius = _place_lesion(kind, a, b, inner, brain_edge, rng)
        # Paint only a box around the lesion (image coords of its centre, +- reach).
        ix, iy, reach = cx + c * lx - s * ly, cy + s * lx + c * ly, 2.2 * radius
        box = (
            slice(max(int(iy - reach), 0), min(int(iy + reach) + 2, h)),
            slice(max(int(ix - reach), 0), min(int(ix + reach) + 2, w)),
        )
        inside = _paint_lesion(kind, img[box], xr[box], yr[box], lx, ly, radius, r[box] < skull_in[box], rng)
        mask = np.zeros((h, w), np.uint8)
        mask[box][inside] = 255

    # Acquisition: bias field, point-spread blur, Rician noise, then display window.
    img *= 1 + 0.15 * _smooth_noise(rng, h, w, 3)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.6, 1.3))
    noise = rng.standard_normal((2, h, w), dtype=np.float32) * rng.uniform(0.01, 0.045)
    img = np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2)
    img = rng.uniform(0.8, 1.15) * img ** rng.uniform(0.7, 1.4) + rng.uniform(-0.02, 0.08)
    return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), mask


def _write_png(path: pathlib.Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


# Fewer jobs than this render in the calling process: starting workers costs more.
MIN_PARALLEL_JOBS = 64


def _render_and_write(out: pathlib.Path, seed: int, job: tuple[int, str, int]) -> bool:
    """Renders one phantom (job: split id, class name, index) with its own seed and writes
    it (and its mask and box copy); True when it has a lesion mask. A process-pool job:
    module level, picklable."""
    split_id, name, i = job
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, class_id(name), i]))
    image, mask = render_phantom(name, rng)
    split = SPLIT_DIRS[split_id]
    file_name = f"syn_{name}_{i:04d}.png"
    _write_png(out / split / name / file_name, image)
    if mask is None:
        return False
    _write_png(out / MASKS_DIR / split / name / file_name, mask)
    boxed = out / BOXES_DIR / name / f"{split.lower()}_{file_name}"
    _write_png(boxed, image)
    boxed.with_suffix(".txt").write_text(format_yolo_box(mask_to_box(mask)))
    return True


def generate_dataset(out_dir, per_class=100, test_per_class=25, seed=0, progress=True, workers=0) -> dict:
    """Writes out_dir/Training/<class>/*.png and out_dir/Testing/<class>/*.png, and lesion masks
    OUTSIDE the class folders at out_dir/masks/<Training|Testing>/<class>/<same file name>.png
    (no mask for notumor), and a box folder out_dir/boxes/ of every tumour phantom. Returns a summary dict (counts per split and class, the out_dir).
    Deterministic for a seed (same bytes on every run, however many workers). Uses tqdm for a progress bar when
    progress=True. `workers` processes render (0: one per core; small jobs render here).
    A split with 0 images per class is not created; existing files with
    other names are left alone."""
    out = pathlib.Path(out_dir)
    jobs = [
        (split_id, name, i)
        for split_id, n in enumerate((per_class, test_per_class))
        for name in CLASS_NAMES
        for i in range(n)
    ]
    counts = {
        SPLIT_DIRS[sid]: {name: 0 for name in CLASS_NAMES}
        for sid, n in enumerate((per_class, test_per_class))
        if n > 0
    }
    render = functools.partial(_render_and_write, out, seed)
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) >= MIN_PARALLEL_JOBS:
            # Spawned, not forked: the caller may hold TensorFlow's threads.
            pool = stack.enter_context(
                ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            )
            masked = pool.map(render, jobs, chunksize=16)
        else:
            masked = map(render, jobs)
        masked = list(tqdm(masked, total=len(jobs), desc="synthetic MRI", unit="img", disable=not progress))
    for split_id, name, _ in jobs:
        counts[SPLIT_DIRS[split_id]][name] += 1
    return {"out_dir": str(out), "seed": seed, "counts": counts, "images": len(jobs), "masks": sum(masked)}


def mask_path_for(image_path) -> pathlib.Path | None:
    """Given an image path written by generate_dataset, returns the path of its lesion mask
    (or None for notumor / when no mask exists)."""
    image_path = pathlib.Path(image_path)
    class_dir = image_path.parent
    split_dir = class_dir.parent
    candidate = split_dir.parent / MASKS_DIR / split_dir.name / class_dir.name / image_path.name
    return candidate if candidate.is_file() else None
