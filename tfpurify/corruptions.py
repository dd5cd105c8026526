"""Common corruptions at severities 1-5 (Hendrycks & Dietterich 2019, the CIFAR-10-C definitions).

Robustness to natural corruptions is the other half of a purifier's story (AAA, Fig. 1): an
autoencoder that removes adversarial noise may also remove Gaussian noise, or may break on blur.
The transforms come from `albumentations` (maintained, works with numpy<2 and 28x28 grey images),
each severity a *fixed* parameter taken from CIFAR-10-C's table wherever albumentations' transform
has the same meaning, so a severity means the same thing on every run and every image:

| corruption | albumentations | severities 1-5 (CIFAR-10-C unless noted) |
|---|---|---|
| gaussian_noise | GaussNoise std | 0.04 0.06 0.08 0.09 0.10 |
| shot_noise | ShotNoise scale = 1 / photons | 1/500 1/250 1/100 1/75 1/50 (albumentations adds gamma 2.2) |
| impulse_noise | SaltAndPepper amount | 0.01 0.02 0.03 0.05 0.07 |
| speckle_noise | MultiplicativeNoise, uniform | same std as 0.06 0.10 0.12 0.16 0.20 |
| gaussian_blur | GaussianBlur sigma | 0.4 0.6 0.7 0.8 1.0 |
| glass_blur | GlassBlur (sigma, max delta, iterations) | CIFAR-10-C's five triples |
| defocus_blur | Defocus (radius, alias blur) | radius 1 1 2 2 3 (integer radii; CIFAR-10-C 0.3-1.5) |
| motion_blur | MotionBlur kernel size | 3 5 5 7 9 (random direction; CIFAR-10-C: ImageMagick) |
| zoom_blur | ZoomBlur max factor, step 0.01 | 1.06 1.11 1.16 1.21 1.26 |
| brightness | RandomBrightnessContrast, + c * max | 0.05 0.10 0.15 0.20 0.30 |
| contrast | (x - mean) * c + mean | 0.75 0.50 0.40 0.30 0.15 |
| elastic_transform | ElasticTransform (alpha, sigma) in pixels | CIFAR-10-C's elastic part at 32 px (affine part dropped; sigma 0.96 -> 1, the least albumentations takes) |
| pixelate | Downscale (area down, nearest up) | 0.95 0.90 0.85 0.75 0.65 |
| jpeg_compression | ImageCompression quality | 80 65 58 50 40 |

Fog, frost, snow, spatter and saturate are left out: they need colour images or picture files.
`imagecorruptions` (CIFAR-10-C's own code) was not chosen: it refuses images under 32x32, pulls an
OpenCV that needs numpy 2, and its glass and Gaussian blurs fail on current scikit-image.

Severity 0 is the identity. Images go through uint8, as CIFAR-10-C stores them.
Install with `pip install 'tfpurify[corruptions]'`.
"""

import numpy as np

from tfpurify.classifiers import predict_logits
from tfpurify.errors import InputValidationError

__all__ = ["CORRUPTIONS", "SEVERITIES", "parse_corruptions", "corrupt", "evaluate_corruptions", "corruption_grid"]

SEVERITIES = (1, 2, 3, 4, 5)
_SPECKLE = (0.06, 0.10, 0.12, 0.16, 0.20)
_GLASS = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))
_DEFOCUS = ((1, 0.1), (1, 0.5), (2, 0.1), (2, 0.5), (3, 0.5))
_ELASTIC = ((0.8, 6.4), (1.6, 6.4), (2.56, 1.92), (3.2, 1.28), (3.2, 1.0))  # sigma >= 1 (albumentations)
_CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)


def _transforms(A):
    """{name: severity (1-5) -> albumentations transform}; A is the imported albumentations."""
    return {
        "gaussian_noise": lambda s: A.GaussNoise(std_range=((0.04, 0.06, 0.08, 0.09, 0.10)[s - 1],) * 2, p=1),
        "shot_noise": lambda s: A.ShotNoise(scale_range=(1.0 / (500, 250, 100, 75, 50)[s - 1],) * 2, p=1),
        "impulse_noise": lambda s: A.SaltAndPepper(amount=((0.01, 0.02, 0.03, 0.05, 0.07)[s - 1],) * 2,
                                                   salt_vs_pepper=(0.5, 0.5), p=1),
        # uniform multiplicative noise in [1 - a, 1 + a] with CIFAR-10-C's standard deviation: a = std * sqrt(3)
        "speckle_noise": lambda s: A.MultiplicativeNoise(
            multiplier=(1 - 3 ** 0.5 * _SPECKLE[s - 1], 1 + 3 ** 0.5 * _SPECKLE[s - 1]), per_channel=True,
            elementwise=True, p=1),
        "gaussian_blur": lambda s: A.GaussianBlur(blur_limit=0, sigma_limit=((0.4, 0.6, 0.7, 0.8, 1.0)[s - 1],) * 2, p=1),
        "glass_blur": lambda s: A.GlassBlur(sigma=_GLASS[s - 1][0], max_delta=_GLASS[s - 1][1],
                                            iterations=_GLASS[s - 1][2], mode="exact", p=1),
        "defocus_blur": lambda s: A.Defocus(radius=(_DEFOCUS[s - 1][0],) * 2, alias_blur=(_DEFOCUS[s - 1][1],) * 2, p=1),
        "motion_blur": lambda s: A.MotionBlur(blur_limit=((3, 5, 5, 7, 9)[s - 1],) * 2, p=1),
        "zoom_blur": lambda s: A.ZoomBlur(max_factor=((1.06, 1.11, 1.16, 1.21, 1.26)[s - 1],) * 2,
                                          step_factor=(0.01, 0.01), p=1),
        "brightness": lambda s: A.RandomBrightnessContrast(
            brightness_limit=((0.05, 0.1, 0.15, 0.2, 0.3)[s - 1],) * 2, contrast_limit=(0, 0), p=1),
        # alpha = c, beta = (1 - c) * mean: (x - mean) * c + mean
        "contrast": lambda s: A.RandomBrightnessContrast(
            brightness_limit=(1 - _CONTRAST[s - 1],) * 2, contrast_limit=(_CONTRAST[s - 1] - 1,) * 2,
            brightness_by_max=False, p=1),
        "elastic_transform": lambda s: A.ElasticTransform(alpha=_ELASTIC[s - 1][0], sigma=_ELASTIC[s - 1][1], p=1),
        "pixelate": lambda s: A.Downscale(scale_range=((0.95, 0.9, 0.85, 0.75, 0.65)[s - 1],) * 2,
                                          interpolation_pair={"downscale": 3, "upscale": 0}, p=1),  # cv2 AREA, NEAREST
        "jpeg_compression": lambda s: A.ImageCompression(quality_range=((80, 65, 58, 50, 40)[s - 1],) * 2, p=1),
    }


CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur", "glass_blur",
               "defocus_blur", "motion_blur", "zoom_blur", "brightness", "contrast", "elastic_transform",
               "pixelate", "jpeg_compression")


def _albumentations():
    try:
        import albumentations
    except ImportError:
        raise InputValidationError("common corruptions need the optional extra: pip install 'tfpurify[corruptions]' "
                                   "(albumentations and opencv-python-headless)") from None
    return albumentations


def parse_corruptions(text):
    """'all' or a comma list of CORRUPTIONS -> list of names; unknown names are an error."""
    names = [t.strip() for t in (text or "").split(",") if t.strip()]
    if names == ["all"]:
        return list(CORRUPTIONS)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if not names or unknown:
        raise InputValidationError(f"unknown corruption {', '.join(unknown) or '(none given)'}; "
                                   f"choose all or from {', '.join(CORRUPTIONS)}")
    return names


def _check_severity(severity):
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 0 <= severity <= 5:
        raise InputValidationError(f"severity must be an integer in 0-5, got {severity!r}")


def corrupt(x, name, severity, seed=0):
    """Images `x` [N, H, W, C] in [0, 1] under corruption `name` at `severity` (0: unchanged).

    Deterministic for a seed: one seeded albumentations pipeline goes over the images in order.
    Returns float32 images of the same shape, in [0, 1].
    """
    _check_severity(severity)
    if name not in CORRUPTIONS:
        parse_corruptions(name)  # raises with the list of names
    x = np.asarray(x, np.float32)
    if severity == 0:
        return x.copy()
    A = _albumentations()
    pipeline = A.Compose([_transforms(A)[name](int(severity))], seed=int(seed))
    images = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    out = np.stack([pipeline(image=image)["image"].reshape(image.shape) for image in images])
    return out.astype(np.float32) / 255.0


def evaluate_corruptions(pipelines, x, y, names, severities=SEVERITIES, batch_size=256, seed=0, classifier=""):
    """Accuracy of each scored pipeline on the corrupted test images, per corruption and severity.

    Args:
      pipelines: {defense name: callable images -> logits}, e.g. {"none": classifier, "aaa": defended}.
      x, y: test images [N, H, W, C] in [0, 1] and labels [N].
      names: corruptions (see CORRUPTIONS); severities: integers in 1-5.

    Returns:
      rows in the results schema: threat_model "corruption", attack = the corruption, eps None,
      params {"severity": s}; `accuracy` counts an example if it is right clean and corrupted (as the
      attack rows do), `plain_accuracy` if right corrupted (CIFAR-10-C's metric).
    """
    for s in severities:
        _check_severity(s)
    y = np.asarray(y)
    clean = {d: np.argmax(predict_logits(fn, x, batch_size), axis=1) == y for d, fn in pipelines.items()}
    rows = []
    for name in names:
        for s in severities:
            xc = corrupt(x, name, s, seed)
            for defense, fn in pipelines.items():
                right = np.argmax(predict_logits(fn, xc, batch_size), axis=1) == y
                rows.append({"defense": defense, "classifier": classifier, "threat_model": "corruption",
                             "attack": name, "eps": None, "params": {"severity": int(s)},
                             "accuracy": float(np.mean(right & clean[defense])),
                             "plain_accuracy": float(np.mean(right))})
    return rows


def corruption_grid(image, names, severities=(0, *SEVERITIES), seed=0):
    """{corruption: [len(severities), H, W, C]} of one image, for `reports.save_image_grid`."""
    image = np.asarray(image, np.float32)[None]
    return {name: np.concatenate([corrupt(image, name, s, seed) for s in severities]) for name in names}
