"""Perceptual hash of the image (``phash``, 64-bit DCT hash from ImageHash, 16 hex digits):
near-duplicate images differ in few bits, so it serves duplicate detection across a catalogue."""

from __future__ import annotations

import imagehash

from pipeline.images import DecodeSize
from pipeline.ingest.processors import IngestItem, Processor


class PerceptualHash(Processor):
    name = "phash"
    writes = ("phash",)

    def decode_size(self) -> DecodeSize:
        return DecodeSize(short=64)  # the hash is taken from a 32x32 copy

    def process(self, item: IngestItem) -> None:
        assert item.image is not None, "phash must run after decode_image"
        item.phash = str(imagehash.phash(item.image.image))
