"""Real generated memes, their copies (JPEG, resized, cropped) and caption variants."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from loadtest.corpus import CAPTIONS, MemeSpec, meme_bytes
from serve_app.media.fingerprint import Fingerprint, Fingerprinter
from serve_app.media.imaging import Limits, decode_image

_LIMITS = Limits()


def decoded(data: bytes) -> Image.Image:
    """``data`` decoded the way the service decodes an upload."""
    return decode_image(data, _LIMITS).image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclass(frozen=True)
class Meme:
    """One meme's fingerprint, its copies' and that of its template under another caption."""

    spec: MemeSpec
    original: Fingerprint
    jpeg: Fingerprint
    """Re-encoded as JPEG at quality 70."""
    resized: Fingerprint
    """Scaled by 0.5."""
    cropped: Fingerprint
    """3 % cut off each side."""
    other_caption: Fingerprint
    """The same template with another top caption: a different meme."""
    thumbnail: bytes
    """A small PNG of the original."""

    @property
    def copies(self) -> dict[str, Fingerprint]:
        return {"jpeg": self.jpeg, "resized": self.resized, "cropped": self.cropped}


def make_meme(fingerprinter: Fingerprinter, template: int, top: str, bottom: str) -> Meme:
    spec = MemeSpec(template=template, top=top, bottom=bottom)
    others = [c for c in CAPTIONS if c not in (top, bottom)]
    # A caption of the same length where there is one: the hardest case for a hash.
    other_top = next((c for c in others if len(c) == len(top)), others[0])
    image = decoded(meme_bytes(spec))
    width, height = image.size
    dx, dy = round(0.03 * width), round(0.03 * height)
    copies = {
        "jpeg": decoded(jpeg(image, 70)),
        "resized": decoded(png(image.resize((width // 2, height // 2)))),
        "cropped": decoded(png(image.crop((dx, dy, width - dx, height - dy)))),
    }
    other = decoded(meme_bytes(MemeSpec(template=template, top=other_top, bottom=bottom)))
    return Meme(
        spec=spec,
        original=fingerprinter.fingerprint(image),
        other_caption=fingerprinter.fingerprint(other),
        thumbnail=png(image.resize((64, 64))),
        **{name: fingerprinter.fingerprint(copy) for name, copy in copies.items()},
    )
