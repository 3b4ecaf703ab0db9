"""Avro: schema catalogue, single-object codec, schema store, compatibility gate, JSON to Avro."""
