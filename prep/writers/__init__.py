"""Writers: a unit's parts, and the finalize merge into shards."""
