"""Near-duplicate matching (pipeline.ingest.duplicates) and the offers query, without
Elasticsearch: the rule, group assignment, the msearch bodies and the offers template."""

import io
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from pipeline.documents import document_id
from pipeline.es import mappings
from pipeline.images import HASH_BANDS, Fingerprint, phash_distance
from pipeline.ingest.duplicates import (
    ID_FIELDS,
    MATCH_FIELDS,
    Candidate,
    MatchRule,
    NewImage,
    Tier,
    assign_groups,
    match_searches,
    same_hash,
)
from pipeline.search.duplicate_groups import group_members, groups_aggregation
from pipeline.search.offers import OffersQuery
from pipeline.settings import VitrineSettings

RULE = MatchRule(
    min_cosine=0.8, max_phash_distance=10, sure_cosine=0.95, min_colour_correlation=0.9
)
X = np.array([1.0, 0.0, 0.0])
Y = np.array([0.0, 1.0, 0.0])


def test_phash_distance_counts_differing_bits():
    assert phash_distance("ffff000000000000", "ffff000000000000") == 0
    assert phash_distance("ffff000000000000", "fffe000000000001") == 2
    assert phash_distance(None, "ff") is None and phash_distance("ff", "") is None


def _phash(bits: int) -> str:
    """A 64-bit hex hash ``bits`` bits away from zero."""
    return f"{(1 << bits) - 1:016x}"


@pytest.mark.parametrize(
    ("cosine", "distance", "match"),
    [
        (0.99, None, True),  # sure cosine alone (no hash, or a re-backgrounded copy)
        (0.95, 40, True),
        (0.90, 10, True),  # likely cosine and close hashes
        (0.90, 11, False),
        (0.90, None, False),
        (0.79, 0, False),  # identical hashes but unlike vectors: not the same item
    ],
)
def test_rule_on_whole_image_hashes_of_documents_without_fingerprint(cosine, distance, match):
    new = NewImage("a", X, _phash(0))
    old = Candidate("b", None, None if distance is None else _phash(distance), cosine)
    assert RULE.matches(cosine, new, old) is match


def _product(print_colours: tuple, size: int = 320) -> Image.Image:
    """A product on a white ground: a square with two stripes of print."""
    image = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    draw.rectangle((60, 60, 260, 160), fill=print_colours[0])
    draw.rectangle((60, 160, 260, 260), fill=print_colours[1])
    draw.ellipse((120, 40, 300, 120), fill=(30, 30, 30))
    return image


RED, GREEN = (200, 50, 50), (50, 130, 60)  # about the same grey


def test_fingerprints_line_up_a_slight_crop_that_the_whole_image_hash_misses():
    image = _product((RED, GREEN))
    crop = image.crop((0, 22, 300, 320))  # 6-7% off the top and the right
    original, copy = Fingerprint.of(image), Fingerprint.of(crop)
    whole = (original.hashes[0] ^ copy.hashes[0]).bit_count()
    bits, colour = original.compare(copy)
    assert bits < whole and bits <= 6 and colour > 0.95
    assert copy.compare(original) == (bits, pytest.approx(colour))


def test_a_blank_image_has_no_colour_to_correlate():
    blank = Fingerprint.of(Image.new("RGB", (120, 90), (255, 255, 255)))
    assert blank.compare(blank) == (0, 0.0)  # no division by a zero spread
    assert blank.compare(Fingerprint.of(_product((RED, GREEN))))[1] == 0.0


def _compare_by_definition(mine: Fingerprint, theirs: Fingerprint) -> tuple[int, float]:
    """Fewest differing bits over the aligned pairs (whole with every region of the other,
    every window with the other's whole), then the best Pearson correlation among those."""
    pairs = [(0, j) for j in range(len(theirs.hashes))] + [
        (i, 0) for i in range(1, len(mine.hashes))
    ]
    bits = {p: (mine.hashes[p[0]] ^ theirs.hashes[p[1]]).bit_count() for p in pairs}
    fewest = min(bits.values())

    def correlation(a: bytes, b: bytes) -> float:
        x, y = (np.frombuffer(t, np.uint8).astype(np.float64) for t in (a, b))
        if x.std() == 0 or y.std() == 0:
            return 0.0
        return float(np.corrcoef(x, y)[0, 1])

    best = max(
        correlation(mine.thumbs[i], theirs.thumbs[j]) for (i, j), b in bits.items() if b == fewest
    )
    return fewest, best


def test_compare_many_gives_each_pair_what_the_definition_does():
    image = _product((RED, GREEN))
    prints = [
        Fingerprint.of(picture)
        for picture in (
            image,
            image.crop((0, 22, 300, 320)),
            image.rotate(3, fillcolor=(245, 245, 245)),
            _product((GREEN, RED)),
            Image.new("RGB", (120, 90), (255, 255, 255)),
        )
    ]
    for mine in prints:
        bits, colours = mine.compare_many(prints)
        for theirs, b, c in zip(prints, bits, colours, strict=True):
            fewest, best = _compare_by_definition(mine, theirs)
            assert (b, c) == (fewest, pytest.approx(best, abs=1e-5))
        assert mine.compare(prints[1]) == (bits[1], pytest.approx(colours[1]))


def test_the_rule_compares_fingerprints_only_where_a_tier_could_admit(monkeypatch):
    compared: list[int] = []
    real = Fingerprint.compare_many

    def counting(self, others):
        compared.append(len(others))
        return real(self, others)

    monkeypatch.setattr(Fingerprint, "compare_many", counting)
    printed = Fingerprint.of(_product((RED, GREEN)))
    new = NewImage("a", X, None, printed)
    others = [Candidate(c, None, None, 0.0, printed) for c in "bcd"]
    assert RULE.matches_many(new, [0.5, 0.79, 0.96], others) == [False, False, True]
    assert compared == []  # below every tier's cosine, or sure by the cosine alone
    assert RULE.matches_many(new, [0.5, 0.85, 0.9], others) == [False, True, True]
    assert compared == [2]  # the two that a tier decides, in one comparison


def test_fingerprints_tell_a_look_alike_in_other_colours_apart():
    original, lookalike = (
        Fingerprint.of(_product((RED, GREEN))),
        Fingerprint.of(_product((GREEN, RED))),
    )
    bits, colour = original.compare(lookalike)
    assert bits <= 6  # the grey hash sees the same picture...
    assert colour < RULE.min_colour_correlation  # ...the colours do not
    new = NewImage("a", X, f"{original.hashes[0]:016x}", original)
    old = Candidate("b", None, f"{lookalike.hashes[0]:016x}", 0.9, lookalike)
    assert not RULE.matches(0.9, new, old)
    assert RULE.matches(
        0.9,
        new,
        Candidate("c", None, None, 0.9, Fingerprint.of(_product((RED, GREEN)).resize((200, 200)))),
    )


def test_fingerprint_round_trips_and_rejects_what_is_not_one():
    fingerprint = Fingerprint.of(_product((RED, GREEN)))
    assert Fingerprint.decode(fingerprint.encode()) == fingerprint
    assert Fingerprint.decode(None) is None
    assert Fingerprint.decode("not base64!") is None
    assert Fingerprint.decode("AAAA") is None  # base64, wrong length


def test_rule_from_settings_defaults():
    rule = MatchRule.from_settings(VitrineSettings())
    assert rule.min_cosine < rule.sure_cosine
    assert 0 < rule.max_phash_distance < 32


def test_unmatched_image_founds_its_own_group():
    grouping = assign_groups([NewImage("a", X, "00")], [[]], {}, RULE)
    assert grouping.groups == {"a": "a"} and grouping.backfill == {}


def test_match_joins_the_indexed_group():
    candidates = [[Candidate("old", "g1", "00", 0.97), Candidate("far", "g2", "00", 0.1)]]
    grouping = assign_groups([NewImage("a", X, "00")], candidates, {}, RULE)
    assert grouping.groups == {"a": "g1"}


def test_several_matching_groups_join_the_smallest_id():
    candidates = [[Candidate("o1", "g9", None, 0.99), Candidate("o2", "g3", None, 0.96)]]
    assert assign_groups([NewImage("a", X, None)], candidates, {}, RULE).groups == {"a": "g3"}


def test_reingest_keeps_the_group_and_ignores_itself():
    # the document itself comes back as its own nearest neighbour: it is not a match
    candidates = [[Candidate("a", "g-old", "00", 1.0), Candidate("b", "g-b", "00", 0.99)]]
    kept = assign_groups([NewImage("a", X, "00")], candidates, {"a": "g-old"}, RULE)
    assert kept.groups == {"a": "g-old"}
    fresh = assign_groups([NewImage("a", X, "00")], [[Candidate("a", None, "00", 1.0)]], {}, RULE)
    assert fresh.groups == {"a": "a"}


def test_matched_document_without_group_founds_it_and_is_backfilled():
    candidates = [[Candidate("legacy", None, "00", 0.99)], [Candidate("legacy", None, "00", 0.99)]]
    images = [NewImage("a", X, "00"), NewImage("b", np.array([0.99, 0.1, 0.0]), "ff")]
    grouping = assign_groups(images, candidates, {}, RULE)
    assert grouping.groups == {"a": "legacy", "b": "legacy"}
    assert grouping.backfill == {"legacy": "legacy"}


def test_an_image_joins_a_group_only_when_it_matches_most_of_the_members_compared():
    """A look-alike that matches an edited copy but not the original stays out: joining on one
    match would chain two items into one group."""
    original, copy = Candidate("o", "g1", _phash(0), 0.6), Candidate("c", "g1", _phash(2), 0.9)
    alone = assign_groups([NewImage("l", X, _phash(0))], [[original, copy]], {}, RULE)
    assert alone.groups == {"l": "l"}  # 1 of 2
    third = Candidate("d", "g1", _phash(1), 0.85)
    joined = assign_groups([NewImage("x", X, _phash(0))], [[original, copy, third]], {}, RULE)
    assert joined.groups == {"x": "g1"}  # 2 of 3
    twice = assign_groups([NewImage("l", X, _phash(0))], [[copy, copy, original]], {}, RULE)
    assert twice.groups == {"l": "l"}  # a member found twice (recent and searchable) votes once


def test_close_colours_allow_more_differing_hash_bits():
    rule = MatchRule.from_settings(VitrineSettings())
    tier = rule.close_colour
    image = _product((RED, GREEN))
    a = Fingerprint.of(image)
    heavy = Fingerprint.of(image.rotate(3, fillcolor=(245, 245, 245)))  # 6 bits
    bits, colour = a.compare(heavy)
    assert rule.max_phash_distance < bits <= tier.bits
    assert rule.same_picture.colour > colour >= tier.colour
    new = NewImage("a", X, f"{a.whole:016x}", a)
    old = Candidate("b", None, f"{heavy.whole:016x}", tier.min_cosine, heavy)
    assert rule.matches(tier.min_cosine, new, old)
    assert not rule.matches(tier.min_cosine - 0.01, new, old)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def test_the_same_picture_matches_at_a_low_cosine_and_a_look_alike_does_not():
    rule = MatchRule.from_settings(VitrineSettings())
    tier = rule.same_picture
    assert tier.min_cosine < rule.min_cosine
    image = _product((RED, GREEN))
    original = Fingerprint.of(image)
    recompressed = Fingerprint.of(_jpeg(image, 25))
    bits, colour = original.compare(recompressed)
    assert bits <= tier.bits and colour >= tier.colour
    new = NewImage("a", X, f"{original.whole:016x}", original)
    old = Candidate("b", None, f"{recompressed.whole:016x}", tier.min_cosine, recompressed)
    assert rule.matches(tier.min_cosine, new, old)
    assert not rule.matches(tier.min_cosine - 0.01, new, old)
    # another print in colours of the same grey: hashes alike, colours not
    lookalike = Fingerprint.of(_product((GREEN, RED)))
    other = Candidate("c", None, f"{lookalike.whole:016x}", tier.min_cosine, lookalike)
    assert not rule.matches(rule.min_cosine - 0.01, new, other)


def test_a_tier_admits_only_within_all_three_bounds():
    tier = Tier(min_cosine=0.5, bits=2, colour=0.999)
    assert tier.admits(0.5, 2, 0.999)
    assert not tier.admits(0.49, 2, 0.999)
    assert not tier.admits(0.5, 3, 0.999)
    assert not tier.admits(0.5, 2, 0.998)


def _hashed(whole: int) -> Fingerprint:
    """A fingerprint with only its whole-image hash (what bands and ``same_hash`` read)."""
    return Fingerprint((whole,), (b"",))


@given(st.integers(0, 2**64 - 1), st.sets(st.integers(0, 63), max_size=len(HASH_BANDS) - 1))
def test_hashes_at_most_four_bits_apart_share_a_band(whole, flipped):
    other = whole
    for bit in flipped:
        other ^= 1 << bit
    assert set(_hashed(whole).bands()) & set(_hashed(other).bands())


def test_band_keys_say_which_band_and_five_bits_can_miss():
    keys = _hashed(0).bands()
    assert keys == ["0:0000", "1:0000", "2:0000", "3:0000", "4:0000"]
    one_per_band = sum(1 << start for start in (0, 13, 26, 39, 52))
    assert not set(keys) & set(_hashed(one_per_band).bands())
    assert sum(HASH_BANDS) == 64


def test_a_shared_band_counts_only_within_the_hash_distance():
    new = NewImage("a", X, None, _hashed(0))
    near = Candidate("b", None, None, 0.3, _hashed(0b1111))
    far = Candidate("c", None, None, 0.3, _hashed(0b11111 << 13))  # shares band 0, 5 bits away
    assert same_hash(new, near, 4) and not same_hash(new, far, 4)
    assert not same_hash(new, Candidate("d", None, None, 0.3), 4)  # no fingerprint


def test_copies_in_one_batch_share_a_group():
    near = np.array([0.99, 0.1, 0.0])
    images = [NewImage("a", X, "00"), NewImage("b", Y, "00"), NewImage("c", near, "01")]
    grouping = assign_groups(images, [[], [], []], {}, RULE)
    assert grouping.groups == {"a": "a", "b": "b", "c": "a"}


def test_match_searches_knn_and_same_hash_per_image_then_the_ids_lookup():
    hashed = _hashed(0xABCDEF)
    searches = match_searches([NewImage("a", X, None, hashed), NewImage("b", Y, None)], k=5)
    assert len(searches) == 5
    assert searches[0]["knn"]["query_vector"] == [1.0, 0.0, 0.0]
    assert searches[0]["knn"]["k"] == 5 and searches[0]["knn"]["num_candidates"] >= 10
    same_hash_query = searches[1]["query"]["script_score"]
    assert same_hash_query["query"]["bool"]["filter"] == [
        {"terms": {"phash_bands": hashed.bands()}}
    ]
    assert same_hash_query["script"]["params"]["query_vector"] == [1.0, 0.0, 0.0]
    assert searches[1]["size"] == 5
    assert searches[3]["query"]["script_score"]["query"]["bool"]["filter"] == [
        {"match_none": {}}
    ]  # no fingerprint: nothing to look up
    # doc values only: no stored field (_id, _source with the vector) is read, no fingerprints
    assert all(search["stored_fields"] == "_none_" for search in searches)
    assert searches[0]["docvalue_fields"] == searches[1]["docvalue_fields"] == MATCH_FIELDS
    assert searches[4]["docvalue_fields"] == [*ID_FIELDS, "duplicate_group"]
    assert searches[4]["query"] == {"ids": {"values": ["a", "b"]}}


def test_offers_query_matches_its_template_params():
    query = OffersQuery(("g1", "g2"), "shop-a", in_stock=True, size=5)
    body = query.body()
    assert body["query"]["bool"]["filter"] == [
        {"term": {"in_stock": True}},
        {"terms": {"duplicate_group": ["g1", "g2"]}},
    ]
    assert body["query"]["bool"]["must_not"] == [{"term": {"merchant_id": "shop-a"}}]
    assert body["collapse"] == {"field": "merchant_id"}
    assert body["sort"][0] == {"price": {"order": "asc", "missing": "_last"}}
    params = query.template_params()
    assert params == {
        "duplicate_groups": ["g1", "g2"],
        "size": 5,
        "exclude_merchant_id": "shop-a",
        "in_stock": True,
    }
    documented = mappings.es_mapping_file("search_templates/offers.json")["params"]
    assert set(params) <= set(documented)
    with pytest.raises(ValueError):
        OffersQuery(("g",), size=0)


def test_groups_aggregation_pages_with_after_key():
    first = groups_aggregation(None, page=10)["groups"]["composite"]
    assert first["size"] == 10 and "after" not in first
    later = groups_aggregation({"group": "g"}, page=10)["groups"]["composite"]
    assert later["after"] == {"group": "g"}


def test_group_members_measure_distance_to_the_founder():
    def hit(doc_id, vector, phash, at, merchant="m"):
        source = {
            "merchant_id": merchant,
            "product_id": doc_id,
            "price": 3.0,
            "currency": "EUR",
            "image_url": f"/{doc_id}.jpg",
            "phash": phash,
            "indexed_at": at,
            "image_vector": vector,
        }
        return {"_id": doc_id, "_source": source}

    hits = [hit("b", [0.6, 0.8], "0f", "2026-01-02"), hit("g", [1.0, 0.0], "00", "2026-01-03")]
    group = group_members("g", hits)
    assert [m.doc_id for m in group.members] == ["g", "b"]  # the founder is the reference
    assert group.members[0].distance == 0.0
    assert group.members[1].distance == pytest.approx(0.4)
    assert group.members[1].phash_distance == 4
    row = group.members[1].csv_row("g")
    assert row["group"] == "g" and row["distance"] == "0.4000" and row["price"] == 3.0
    # founder deleted: the earliest indexed member is the reference
    assert group_members("g", hits[:1]).members[0].distance == 0.0


@given(st.lists(st.floats(-1, 1, width=32), min_size=32, max_size=32).filter(any))
def test_the_founder_is_at_distance_zero_from_itself(vector):
    """In float32 a unit vector's cosine with itself came out 0.99999982 (a CI run saw it)."""
    hit = {"_id": "g", "_source": {"merchant_id": "m", "product_id": "p", "image_vector": vector}}
    assert group_members("g", [hit]).members[0].distance == 0.0


class FakeES:
    """Answers the matcher's msearch with canned hits (per image: kNN, then same hash) and its
    mget with ``fingerprints`` (doc id -> Fingerprint); records bulk updates and mgets."""

    def __init__(self, knn_hits, own_hits=(), fail=None, band_hits=None, fingerprints=None):
        self.knn_hits, self.own_hits, self.fail = knn_hits, list(own_hits), fail
        self.band_hits = band_hits or [[] for _ in knn_hits]
        self.fingerprints = fingerprints or {}
        self.searches, self.bulks, self.fetched = [], [], []

    def mget(self, docs, realtime):
        self.fetched.append([doc["_id"] for doc in docs])
        return {
            "docs": [
                {"_id": doc["_id"], "found": True, "_source": {"fingerprint": fingerprint.encode()}}
                if (fingerprint := self.fingerprints.get(doc["_id"]))
                else {"_id": doc["_id"], "found": True, "_source": {}}
                for doc in docs
            ]
        }

    def msearch(self, searches):
        if self.fail:
            raise self.fail
        self.searches.append(searches)
        responses = []
        for knn, banded in zip(self.knn_hits, self.band_hits, strict=True):
            responses += [{"hits": {"hits": knn}}, {"hits": {"hits": banded}}]
        return {"responses": [*responses, {"hits": {"hits": self.own_hits}}]}

    def bulk(self, operations):
        self.bulks.append(operations)


def _items(tmp_path, n, start=0):
    from PIL import Image

    from pipeline.documents import Product
    from pipeline.images import load_image
    from pipeline.ingest.processors import IngestItem

    items = []
    for i in range(start, start + n):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(path)
        product = Product(product_id=f"p{i}", merchant_id="m", title="t", images=[str(path)])
        item = IngestItem(product, 0, image=load_image(str(path)), vector=X, phash="00")
        items.append(item)
    return items


def test_matcher_sends_one_msearch_per_batch_and_backfills(tmp_path):
    from pipeline.ingest.duplicates import DuplicateMatcher

    legacy = _hit("legacy", 0.999, phash="00")
    es = FakeES([[legacy], [legacy]])
    items = _items(tmp_path, 2)
    DuplicateMatcher(VitrineSettings(), es).assign(items, ["shop.m.000001"])
    assert len(es.searches) == 1 and len(es.searches[0]) == 2 * 5  # header + body each
    assert {header["index"] for header in es.searches[0][::2]} == {"shop.m.000001"}
    assert [item.duplicate_group for item in items] == [_id("legacy")] * 2
    [operations] = es.bulks
    assert operations[0] == {"update": {"_index": "shop.m.000001", "_id": _id("legacy")}}
    assert operations[1] == {"doc": {"duplicate_group": _id("legacy")}}


def test_a_reingested_image_keeps_its_group(tmp_path):
    """The ids look-up's hits carry no ``_id``: the matcher knows the batch's own documents by
    their doc values, so a re-ingested image keeps the group it has."""
    from pipeline.ingest.duplicates import DuplicateMatcher

    items = _items(tmp_path, 1)
    own = _hit("p0", 1.0, sha=items[0].image.sha256, group="kept")
    DuplicateMatcher(VitrineSettings(), FakeES([[]], own_hits=[own])).assign(items, ["shop.m.1"])
    assert items[0].duplicate_group == "kept"


def test_matcher_keeps_same_hash_hits_within_the_hash_distance(tmp_path):
    """A recompressed copy that kNN ranks too far away comes back from the band look-up and
    joins by the same-picture tier; a band hit whose whole hash is further off is dropped, so
    it does not vote (kept, it would outvote the copy: 1 match of 2)."""
    from pipeline.ingest.duplicates import DuplicateMatcher

    settings = VitrineSettings()
    image = _product((RED, GREEN))
    original, copy = Fingerprint.of(image), Fingerprint.of(_jpeg(image, 25))
    far = Fingerprint.of(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert (original.whole ^ far.whole).bit_count() > settings.duplicate_max_phash_distance
    new = NewImage("n", X, None, original)
    assert not MatchRule.from_settings(settings).matches(
        0.6, new, Candidate("f", "g", None, 0.6, far)
    )

    items = _items(tmp_path, 1)
    items[0].fingerprint = original.encode()
    band_hits = [[_hit("copy", 0.6, group="g"), _hit("far", 0.6, group="g")]]
    es = FakeES([[]], band_hits=band_hits, fingerprints={_id("copy"): copy, _id("far"): far})
    DuplicateMatcher(settings, es).assign(items, ["shop.m.000001"])
    assert items[0].duplicate_group == "g"


SHA = "5" * 64


def _hit(product_id, cosine, *, sha=SHA, group=None, phash=None):
    """A hit as ``match_searches`` asks for it: doc values only, no ``_id`` (a stored field)."""
    fields = {
        "merchant_id": ["m"],
        "product_id": [product_id],
        "image_sha256": [sha],
        "duplicate_group": [group] if group else [],
        "phash": [phash] if phash else [],
    }
    return {"_index": "shop.m.000001", "_score": (1 + cosine) / 2, "fields": fields}


def _id(product_id, sha=SHA):
    """The document id of a hit made by ``_hit``."""
    return document_id("m", product_id, sha)


def test_fingerprints_are_fetched_once_and_only_where_the_hashes_decide(tmp_path):
    """The same neighbours come back for many images: each fingerprint is fetched once per
    process, only for candidates whose cosine lets the hashes decide (not below every tier, not
    from the sure cosine), and never for the process's own images."""
    from pipeline.ingest.duplicates import DuplicateMatcher

    settings = VitrineSettings()
    rule = MatchRule.from_settings(settings)
    lowest = min(tier.min_cosine for tier in rule.tiers)
    printed = Fingerprint.of(_product((RED, GREEN)))
    neighbours = [
        _hit("decided", (lowest + rule.sure_cosine) / 2),
        _hit("too-far", lowest - 0.01),
        _hit("sure", rule.sure_cosine),
    ]
    es = FakeES([neighbours], fingerprints={_id("decided"): printed})
    matcher = DuplicateMatcher(settings, es)
    batches = [_items(tmp_path, 1, start) for start in range(4)]
    for items in batches:
        items[0].fingerprint = printed.encode()
    for items in batches[:3]:
        matcher.assign(items, ["shop.m.000001"])
    assert es.fetched == [[_id("decided")]]
    first = batches[0][0]  # now found by kNN: its fingerprint is the process's own
    es.knn_hits = [[_hit("p0", 0.8, sha=first.image.sha256)]]
    matcher.assign(batches[3], ["shop.m.000001"])
    assert es.fetched == [[_id("decided")]]


def test_matcher_lets_elasticsearch_errors_reach_the_job(tmp_path):
    """Unreachable Elasticsearch fails the whole batch, as a failed bulk write does, so the job
    retries it and records ``elasticsearch_unavailable`` if the budget runs out."""
    from elasticsearch import ConnectionError as ESConnectionError

    from pipeline.ingest.duplicates import DuplicateMatcher

    items = _items(tmp_path, 2)
    down = FakeES([], fail=ESConnectionError("refused"))
    with pytest.raises(ESConnectionError):
        DuplicateMatcher(VitrineSettings(), down).assign(items, ["shop.m.000001"])
    assert all(i.error is None and i.duplicate_group is None for i in items)


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/v1/products/sku-1/offers", "offers"),
        ("/v1/products/a/b/offers", "offers"),  # product ids may contain "/"
        ("/v1/products/sku-1", "get_product"),
        ("/v1/products/a/b", "get_product"),
    ],
)
def test_offers_route_comes_before_the_product_view(path, endpoint):
    from starlette.routing import Match

    from pipeline.api.app import create_app

    app = create_app(VitrineSettings(), load_model=False)
    scope = {"type": "http", "path": path, "method": "GET", "root_path": ""}

    def routes(container):  # FastAPI keeps included routers as nested routers
        for route in container:
            nested = getattr(route, "original_router", None)
            yield from routes(nested.routes) if nested else [route]

    first = next(r for r in routes(app.routes) if r.matches(scope)[0] == Match.FULL)
    assert first.endpoint.__name__ == endpoint


@pytest.mark.parametrize(("status", "transient"), [(503, True), (500, True), (400, False)])
def test_a_failed_match_search_is_transient_only_for_retryable_statuses(
    tmp_path, status, transient
):
    """Right after Elasticsearch restarts, shards may not be available yet (503), and a node
    that just left a cluster fails searches (500): retry the batch; a bad request is a bug."""
    from pipeline.es.client import is_transient_es_error
    from pipeline.ingest.duplicates import DuplicateMatcher

    class Unready(FakeES):
        def msearch(self, searches):
            error = {"error": {"type": "no_shard_available_action_exception"}, "status": status}
            return {"responses": [error, error, error]}

    with pytest.raises(Exception) as failure:
        DuplicateMatcher(VitrineSettings(), Unready([])).assign(
            _items(tmp_path, 2), ["shop.m.000001"]
        )
    assert is_transient_es_error(failure.value) is transient


def test_recent_images_nearest_first_then_those_of_the_same_hash(tmp_path):
    """What the matcher remembers is searched as Elasticsearch would be: the k nearest, then up
    to k more further down whose whole-image hash is within the distance (``same_hash``)."""
    from pipeline.ingest import duplicates

    settings = VitrineSettings(duplicate_candidates=2, duplicate_max_phash_distance=4)
    matcher = duplicates.DuplicateMatcher(settings, FakeES([[]]))
    angles = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]  # radians from X: nearest first
    # the new image's hash is 0: r1 is near by its vector alone; r2 and r4 are within 4 bits;
    # r3 is 5 bits away; r5 is within but a third (k = 2); r6 has no fingerprint
    hashes = [0b1, 0b11111 << 40, 0b11, 0b11111, 0b1111, 0, None]
    now = time.monotonic()
    for n, (angle, whole) in enumerate(zip(angles, hashes, strict=True)):
        vector = np.array([np.cos(angle), np.sin(angle), 0.0])
        image = NewImage(f"r{n}", vector, None, None if whole is None else _hashed(whole))
        matcher._recent.append((now, image, f"g{n}"))
    [found] = matcher._recent_candidates([NewImage("new", X, None, _hashed(0))])
    assert [c.doc_id for c in found] == ["r0", "r1", "r2", "r4"]
    assert [c.group for c in found] == ["g0", "g1", "g2", "g4"]
    assert found[0].cosine == pytest.approx(np.cos(0.1))
    [unprinted] = matcher._recent_candidates([NewImage("new", X, None, None)])
    assert [c.doc_id for c in unprinted] == ["r0", "r1"]


def test_copies_in_successive_batches_share_a_group_before_elasticsearch_finds_them(
    tmp_path, monkeypatch
):
    """A document is searchable a refresh interval after it is written: a copy ingested by the
    same process in the meantime (another job of a threads-pool worker) still joins its group,
    through the matcher's memory of what it grouped; past RECENT_WINDOW_S it relies on search."""
    from pipeline.ingest import duplicates

    settings = VitrineSettings(duplicate_min_cosine=0.5, duplicate_sure_cosine=0.9999)
    matcher = duplicates.DuplicateMatcher(settings, FakeES([[]]))  # the index finds nothing
    fingerprint = Fingerprint.of(_product((RED, GREEN)))
    first, copy, later = (_items(tmp_path, 1, start) for start in range(3))
    for batch in (first, copy, later):
        batch[0].fingerprint = fingerprint.encode()
    matcher.assign(first, ["shop.m.000001"])
    matcher.assign(copy, ["shop.m.000001"])
    assert copy[0].duplicate_group == first[0].duplicate_group
    clock = time.monotonic() + duplicates.RECENT_WINDOW_S + 1
    monkeypatch.setattr(duplicates.time, "monotonic", lambda: clock)
    matcher.assign(later, ["shop.m.000001"])
    assert later[0].duplicate_group not in (None, first[0].duplicate_group)
