"""TFDS builder: emoji images with their Unicode names, from Debian `fonts-noto-color-emoji`.

Every single-codepoint emoji the font maps (its cmap, read with fontTools; without fontTools,
candidate codepoints whose rendering differs from a missing glyph's) is drawn with pillow at the
font's bitmap size (109 px, `embedded_color=True`), centred on a white square and downsampled to
32 x 32 RGB. The caption is `unicodedata.name(ch).lower()`, e.g. "grinning face with big eyes";
codepoints this Python's Unicode database cannot name (newer than its `unidata_version`, which is
recorded) are left out. About 12% of the emoji, chosen by a hash of the caption, are held out.
A coarse class for zero-shot evaluation comes from the first keyword of CLASS_KEYWORDS found in
the caption ("other" when none is).
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from fmjax.data.corpora import is_validation
from fmjax.data.corpora.base import PackageBuilder
from fmjax.errors import ConfigError

PACKAGE = "fonts-noto-color-emoji"
FONT_FILE = "NotoColorEmoji.ttf"
PACKAGE_FONT_PATH = f"usr/share/fonts/truetype/noto/{FONT_FILE}"
FONT_SIZE = 109  # Noto Color Emoji's one bitmap strike: other sizes fail to load
IMAGE_SIZE = 32
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
VALIDATION_FRACTION = 0.12
# Coarse classes for zero-shot classification: the first class whose keywords meet a word of the
# caption ("cat face" -> cat, "clock face one oclock" -> clock). Words that name the picture's
# main object, common enough to appear in the held-out split.
CLASS_KEYWORDS = (
    ("cat", ("cat",)),
    ("clock", ("clock",)),
    ("face", ("face",)),
    ("hand", ("hand", "hands")),
    ("heart", ("heart",)),
    ("arrow", ("arrow", "arrows")),
    ("moon", ("moon",)),
    ("letter", ("letter",)),
    ("person", ("person", "man", "woman", "baby")),
    ("square", ("square", "squared")),
    ("circle", ("circle", "circled")),
    ("ball", ("ball",)),
)
CLASS_NAMES = tuple(name for name, _ in CLASS_KEYWORDS) + ("other",)
OTHER_LABEL = len(CLASS_KEYWORDS)
# Format characters, combining marks and spaces draw nothing on their own (ZWJ, VS16, tags).
_INVISIBLE_CATEGORIES = ("Cc", "Cf", "Mn", "Me", "Zs")
# Where the fallback (no fontTools) looks for emoji: symbols, dingbats, CJK squares, emoji blocks.
_CANDIDATE_RANGES = ((0x00A0, 0x3300), (0x1F000, 0x1FB00))
_MISSING_CODEPOINT = 0x10FFFD  # a private-use codepoint no emoji font maps


def caption(character: str) -> str:
    """The caption of an emoji: its lowercased Unicode name ('' if this Python has none)."""
    return unicodedata.name(character, "").lower()


def coarse_label(text: str) -> int:
    """Index in CLASS_NAMES of the first class whose keyword is a word of `text`."""
    words = set(text.replace("-", " ").split())
    for index, (_, keywords) in enumerate(CLASS_KEYWORDS):
        if words.intersection(keywords):
            return index
    return OTHER_LABEL


def load_font(path: str):
    """The pillow FreeType font at the emoji bitmap size."""
    from PIL import ImageFont

    try:
        # Basic layout: one codepoint needs no shaping, and raqm is an optional library.
        return ImageFont.truetype(path, FONT_SIZE, layout_engine=ImageFont.Layout.BASIC)
    except OSError as e:
        raise ConfigError(f"cannot load {path} as a {FONT_SIZE}px font ({e}); re-fetch it") from e


def render(font, character: str, size: int = IMAGE_SIZE) -> np.ndarray | None:
    """uint8 [size, size, 3]: the glyph centred on white, downsampled; None if it draws nothing."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(character)
    width, height = right - left, bottom - top
    if width <= 0 or height <= 0:
        return None
    side = max(width, height)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    origin = ((side - width) // 2 - left, (side - height) // 2 - top)
    ImageDraw.Draw(canvas).text(origin, character, font=font, embedded_color=True)
    if canvas.getchannel("A").getextrema()[1] == 0:
        return None
    white = Image.new("RGBA", canvas.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, canvas).convert("RGB")
    return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), np.uint8)


def _is_candidate(codepoint: int) -> bool:
    character = chr(codepoint)
    return (
        codepoint >= 0x80  # ASCII digits, '#' and '*' are keycap bases, not pictures
        and unicodedata.category(character) not in _INVISIBLE_CATEGORIES
        and bool(caption(character))
    )


def emoji_codepoints(font_path: str) -> list[int]:
    """Sorted single codepoints the font draws and this Python's Unicode database names."""
    try:
        from fontTools.ttLib import TTFont
    except ImportError:
        return _codepoints_by_rendering(font_path)
    with TTFont(font_path, lazy=True) as font:
        mapped = font.getBestCmap() or {}
    return sorted(c for c in mapped if _is_candidate(c))


def _codepoints_by_rendering(font_path: str) -> list[int]:
    """Without fontTools: candidates whose rendering differs from a missing glyph's."""
    font = load_font(font_path)
    missing = render(font, chr(_MISSING_CODEPOINT))
    found = []
    for start, stop in _CANDIDATE_RANGES:
        for codepoint in range(start, stop):
            if not _is_candidate(codepoint):
                continue
            image = render(font, chr(codepoint))
            if image is not None and (missing is None or not np.array_equal(image, missing)):
                found.append(codepoint)
    return found


def emoji_examples(font_path: str) -> list[dict]:
    """{"codepoint", "caption", "label", "image"} of every emoji of the font, by codepoint."""
    font = load_font(font_path)
    examples = []
    for codepoint in emoji_codepoints(font_path):
        image = render(font, chr(codepoint))
        if image is None:
            continue
        text = caption(chr(codepoint))
        examples.append(
            {"codepoint": codepoint, "caption": text, "label": coarse_label(text), "image": image}
        )
    return examples


class Emoji(PackageBuilder):
    """Noto Color Emoji pairs: {"image" uint8 [32, 32, 3], "caption", "label", "codepoint"}."""

    name = "fmjax_emoji"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Single-codepoint emoji of fonts-noto-color-emoji at 32x32."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info(
            description="Emoji of Noto Color Emoji rendered at 32x32, captioned by Unicode name.",
            features={
                # Tensor, not Image: Image encodes through TensorFlow, which we do not need.
                "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
                "caption": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                "codepoint": tfds.features.Scalar(dtype=np.int32),
            },
            homepage="https://packages.debian.org/fonts-noto-color-emoji",
            license="OFL-1.1",
        )

    def _font(self) -> tuple[str, dict]:
        """The font file's path and its provenance (package, version, sha256)."""
        local = self.local_copy(PACKAGE, [FONT_FILE])
        if local is not None:
            return os.path.join(self._source_dir, FONT_FILE), local
        extract_dir, provenance = self.extract_debian(
            PACKAGE, PACKAGE_FONT_PATH, f"point data.source_dir at a folder with {FONT_FILE}"
        )
        return os.path.join(extract_dir, PACKAGE_FONT_PATH), provenance

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        try:
            import PIL  # noqa: F401
        except ImportError as e:
            raise ConfigError("rendering the emoji needs pillow: pip install pillow") from e
        path, provenance = self._font()
        examples = emoji_examples(path)
        if not examples:
            raise ConfigError(f"{path} draws no named emoji; re-fetch {PACKAGE}")
        held_out = [is_validation(ex["caption"], VALIDATION_FRACTION) for ex in examples]
        splits = {
            "train": [ex for ex, out in zip(examples, held_out, strict=True) if not out],
            "validation": [ex for ex, out in zip(examples, held_out, strict=True) if out],
        }
        provenance.update(
            unicode_version=unicodedata.unidata_version,
            font_size=FONT_SIZE,
            image_size=IMAGE_SIZE,
            class_names=list(CLASS_NAMES),
            **{f"num_{split}_examples": len(rows) for split, rows in splits.items()},
        )
        self.info.metadata.update(provenance)
        return {split: self._generate_examples(rows) for split, rows in splits.items()}

    def _generate_examples(self, examples: list[dict]) -> Iterator[tuple[int, dict]]:
        for example in examples:
            yield example["codepoint"], example
