"""Perceptual hash of the image (``phash``, 64-bit DCT hash from ImageHash, 16 hex digits):
near-duplicate images differ in few bits, so it serves duplicate detection across a catalogue;
and the fuller ``fingerprint`` (hashes and colour thumbnails of the image and of 34 windows,
``pipeline.images.Fingerprint``) that near-duplicate matching compares, with its whole-image
hash cut into ``phash_bands`` for the look-up of the same picture."""

from __future__ import annotations

import imagehash

from pipeline.images import FINGERPRINT_WORK_SIDE, DecodeSize, Fingerprint
from pipeline.ingest.processors import IngestItem, Processor


class PerceptualHash(Processor):
    name = "phash"
    writes = ("phash", "fingerprint", "phash_bands")

    def decode_size(self) -> DecodeSize:
        return DecodeSize(short=FINGERPRINT_WORK_SIDE)  # the hashes use 32x32 copies

    def process(self, item: IngestItem) -> None:
        assert item.image is not None, "phash must run after decode_image"
        item.phash = str(imagehash.phash(item.image.image))
        fingerprint = Fingerprint.of(item.image.image)
        item.fingerprint = fingerprint.encode()
        item.phash_bands = fingerprint.bands()
