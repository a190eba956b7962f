"""The synthetic query sets' filters: what the query benchmark's rows claim of them."""

from bench import search_data as data


def test_price_caps_are_all_different_and_keep_every_document():
    caps = data.price_caps(400)
    assert len(caps) == len(set(caps)) == 400
    assert all(data.PRICE <= cap <= 1000 * data.PRICE for cap in caps)
    assert data.price_caps(400) == caps  # the same draw on every run
