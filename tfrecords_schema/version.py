"""Version of the on-disk format (records and dataset_info.json)."""

# Bump when a key, a dtype or the meaning of a value changes; readers refuse other versions.
SCHEMA_VERSION = 1
