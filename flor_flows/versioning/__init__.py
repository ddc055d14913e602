"""Everything that touches git, data copies, checkpoint files and the object store."""

__all__ = ["archives", "checkpoints", "code", "data", "paths", "storage"]
