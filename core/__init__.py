"""The shared vocabulary of NEXUS Edge: point batches, quality codes, UNS topics, settings.

Every layer imports this package; it imports nothing else of the project.
"""

from core.batch import PointBatch, now_ns, tag_id_for
from core.quality import Quality, is_bad, is_good, is_uncertain, quality_name
from core.uns import IsaPath, uns_topic

__all__ = [
    "IsaPath",
    "PointBatch",
    "Quality",
    "is_bad",
    "is_good",
    "is_uncertain",
    "now_ns",
    "quality_name",
    "tag_id_for",
    "uns_topic",
]
