"""Annotations: Camelyon16 ASAP XML and QuPath GeoJSON, tile labels and masks."""

from anomalib_wsi.annotations.asap import write_asap_xml

__all__ = ["write_asap_xml"]
