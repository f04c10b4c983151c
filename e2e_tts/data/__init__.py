"""Data: corpus generation, manifest readers, shards and the streaming pipeline."""
