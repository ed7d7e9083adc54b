"""pengi-search: an audio search engine built on Pengi, the audio language model."""

__version__ = "0.1.0"
