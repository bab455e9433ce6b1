"""Runtime readers for what `prep` writes. Needs only numpy (and torch for DataLoaders)."""
