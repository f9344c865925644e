"""Exported policies (ARCHITECTURE §8): a trial's module and everything needed to feed it, as a bundle
directory (`bundle`), written from a search (`export`) and run on raw OHLCV bars (`act`)."""
