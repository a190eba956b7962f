"""Perceptual hash of the image (``phash``, 64-bit DCT hash from ImageHash, 16 hex digits):
near-duplicate images differ in few bits, so it serves duplicate detection across a catalogue;
and the fuller ``fingerprint`` (hashes and colour thumbnails of the image and of nine windows,
``pipeline.images.Fingerprint``) that near-duplicate matching compares."""

from __future__ import annotations

from pipeline.images import DecodeSize, Fingerprint
from pipeline.ingest.processors import IngestItem, Processor


class PerceptualHash(Processor):
    name = "phash"
    writes = ("phash", "fingerprint")

    def decode_size(self) -> DecodeSize:
        return DecodeSize(short=64)  # the hash is taken from a 32x32 copy

    def process(self, item: IngestItem) -> None:
        assert item.image is not None, "phash must run after decode_image"
        fingerprint = Fingerprint.of(item.image.image)
        item.phash = f"{fingerprint.hashes[0]:016x}"
        item.fingerprint = fingerprint.encode()
