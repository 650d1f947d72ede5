"""ownpage-sync: keep an Ownpage newsletter list in step with the publisher's database."""

__version__ = "0.1.0"
